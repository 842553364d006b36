"""Test-time augmentation of ``bench/recipes.py``'s fold models, scored on their folds (not a test).

    .venv/bin/python bench/tta.py --dataset ucsd --model long-schedule@40 --folds 0,1,2,3,4 \
        --workdir /tmp/cvwork

Each validation slice is prepared as the model card says, then seen in a few views: as prepared (the one
view covidct ships by default), its mirror image (``covidct train --tta``), and torchvision's ten crops
(the four corners and the centre, each 0.85 of the side, and their mirror images) resized back to the
input size; the default's training crops cover 0.6-1 of the area, so every view is one the model was
trained on. A view set averages its views' logits; the card's calibration and threshold then give the
probabilities, sensitivity and specificity (threshold and temperature were fitted to the single view).
Each set costs its number of views in forward passes. Every fold is scored as shipped and in the external
look of ``bench/reexport.py``; rows are appended to ``--out`` and kept when the command runs again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from fold_models import fold_model_parser, score_fold_models
from recipes import mean_sd, paired_ci, parse_fold_model
from reexport import EXPORTS, decode_grays, labels_of, patient_auc
from torchvision.transforms.v2 import functional as tvf

from covidct.evaluate.metrics import binary_metrics
from covidct.model.checkpoint import load_model_dir
from covidct.model.device import supports_bf16
from covidct.model.forward import predict_logits
from covidct.preprocess.augment import export_as
from covidct.preprocess.pipeline import prepare_slices
from covidct.preprocess.transforms import Preprocessing

CROP_SIDE = 0.85
CROPS = ("top left", "top right", "bottom left", "bottom right", "centre")
VIEWS = ("as prepared", "mirror", *CROPS, *(f"{crop}, mirror" for crop in CROPS))
VIEW_SETS = {
    "single": VIEWS[:1],
    "hflip": VIEWS[:2],
    "five crops": (VIEWS[0], *CROPS),
    "ten crops + hflip": VIEWS,
}
VARIANTS = ("as shipped", "wide window + gray padding (external look)")


def main() -> None:
    parser = fold_model_parser(__doc__.splitlines()[0], "tta.json")
    parser.add_argument("--model", required=True, help="RECIPE@MINUTES[/seedN]: whose fold models")
    args = parser.parse_args()
    model = parse_fold_model(args.model)
    rows = score_fold_models(
        args,
        {"model": model.name},
        [model],
        lambda model_dirs, scored: _score(model_dirs[0], scored),
        lambda row: ", ".join(f"{s} {f['auc']:.3f}" for s, f in row["variants"]["as shipped"].items()),
    )
    _print_summary(rows)


def view_logits(
    model: torch.nn.Module, preprocessing: Preprocessing, slices: torch.Tensor
) -> dict[str, torch.Tensor]:
    """(N, C) logits of every view in ``VIEWS`` of (N, S, S) prepared slices."""
    size = slices.shape[-1]
    crop = round(size * CROP_SIDE)
    # ten_crop gives the five crops, then the five crops of the mirror image, in CROPS order.
    crops = [tvf.resize(view, [size, size], antialias=True) for view in tvf.ten_crop(slices, [crop, crop])]
    views = dict(zip(VIEWS, [slices, slices.flip(-1), *crops], strict=True))
    device = torch.device("cpu")
    return {
        name: predict_logits(
            model, view, preprocessing=preprocessing, device=device, use_bf16=supports_bf16(device)
        )
        for name, view in views.items()
    }


def _score(model_dir: Path, scored: list[dict]) -> dict:
    """Per variant and view set: slice and patient ROC-AUC, sensitivity, specificity and F1."""
    model, card = load_model_dir(model_dir)
    model.eval()
    positive = card.classes.index(card.positive_class)
    grays, labels = decode_grays(scored), labels_of(scored)
    groups = [row["patient_id"] for row in scored]
    variants = {}
    for variant in VARIANTS:
        exported = [export_as(torch.from_numpy(gray), EXPORTS[variant]).numpy() for gray in grays]
        slices = torch.as_tensor(prepare_slices(exported, card.preprocessing))
        logits = view_logits(model, card.preprocessing, slices)
        variants[variant] = {}
        for view_set, views in VIEW_SETS.items():
            mean_logits = torch.stack([logits[view] for view in views]).mean(0)
            prob = card.decision.probabilities(mean_logits.numpy())[:, positive]
            metrics = binary_metrics(labels, prob, card.decision.threshold)
            variants[variant][view_set] = {
                **{k: round(float(metrics[k]), 4) for k in ("auc", "sensitivity", "specificity", "f1")},
                "patient_auc": patient_auc(labels, prob, groups),
                "forward_passes": len(views),
            }
    return {"n_scored": len(scored), "threshold": card.decision.threshold, "variants": variants}


def _print_summary(rows: list[dict]) -> None:
    """Mean ± sd over folds of each view set, and each set minus the single view on the same folds (with a
    95% interval)."""
    if not rows:
        print("no fold scored for this model")
        return
    print(
        f"{len(rows)} folds ({', '.join(str(row['fold']) for row in sorted(rows, key=lambda r: r['fold']))})"
    )
    for variant in VARIANTS:
        print(variant)
        for view_set in VIEW_SETS:
            line = []
            for level in ("auc", "patient_auc", "sensitivity", "specificity"):
                values = [row["variants"][variant][view_set][level] for row in rows]
                single = [row["variants"][variant]["single"][level] for row in rows]
                paired = [
                    None if v is None or s is None else v - s for v, s in zip(values, single, strict=True)
                ]
                line.append(f"{level} {mean_sd(values)} ({mean_sd(paired, signed=True)} {paired_ci(paired)})")
            print(f"  {view_set}: " + "; ".join(line))


if __name__ == "__main__":
    main()
