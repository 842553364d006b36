"""Training recipes compared by cross-validation, row by row, resumable across sessions (not a test).

    .venv/bin/python bench/recipes.py --dataset ucsd --recipes default,peer --folds 0,1 --max-minutes 7
    .venv/bin/python bench/recipes.py --summary   # mean ± sd per recipe; paired deltas vs default,
                           # full-augmentation, peer, and (other budgets) full-augmentation at 20 minutes
    .venv/bin/python bench/recipes.py --folds 0 --pretrain-manifests DIR   # fold 0's training rows
    covidct pretrain DIR/ucsd-fold0-fold.csv --out BACKBONE --split-col split  # never sees fold 0
    .venv/bin/python bench/recipes.py --recipes ssl --folds 0 --backbone BACKBONE

Folds never touch a test split. UCSD-AI4H: its official train and val splits pooled and cut into 5
patient-grouped folds (patients of each class shuffled with a fixed seed and dealt round-robin, so the
folds are class-balanced by patient); the official test split is left out. SARS-CoV-2 CT: blocks 0-8 of
each class (the contiguous blocks are the groups; block 9 is left out), fold f holding blocks {2f, 2f+1}
(fold 4: block 8 alone). Each fold's model is trained on the other folds with the fold as its validation
split (the threshold, calibration and epoch are chosen there, as ``covidct train`` does), so the fold
scores are optimistic, the more so for a recipe whose validation AUC swings from epoch to epoch; compare
recipes on the same folds, not with the test figures. ``--selection inner`` removes that bias: fold f's
model trains on three folds, chooses its epoch, calibration and threshold on fold f+1 (mod 5), and is scored
on fold f, which it never saw (less training data, so lower scores; compare inner rows with inner rows).

A recipe is a named set of ``TrainConfig`` options (``RECIPES``), or ``peer``: the UCSD baseline's
published recipe (``bench/peers.py``) with the same weights, folds and budget. Every (dataset, recipe,
fold, seed, budget) row records slice- and patient-level ROC-AUC on its validation fold, as shipped and
re-exported (``bench/reexport.py``: wide and narrow windows, a circular field of view with gray padding),
and is appended to ``--out`` as soon as it is measured; rows already there are skipped, so an
interrupted study goes on where it stopped, in this session or a later one.

A budget is minutes of wall-clock training, so rows compare only when trained on the same kind of compute:
every row so far was trained on a 2-core CPU that computes in bf16 (an Intel Xeon with AMX, an AMD EPYC with
AVX512-BF16). Elsewhere the same budget buys another number of steps (a CPU without bf16 trains in fp32,
several times slower, a GPU far faster), so ``study_host`` refuses to train there unless ``--any-host``
is given with another ``--out`` than the study's file; every row records the host it was trained on.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from accuracy import EpochPrinter
from generalise import _choose, _limited
from machine import machine_facts
from peers import PEER_RECIPE, train_peer
from reexport import EXPORTS, card_scorer, decode_grays, labels_of, score_variants
from scipy.stats import t as student_t
from shared_datasets import SOURCE_ROWS, write_manifest

from covidct.data.manifest import read_manifest
from covidct.errors import InputError
from covidct.model.backbone import read_backbone, refuse_seen_test_files
from covidct.model.device import resolve_device, supports_bf16
from covidct.model.pretrained import Backbone, resolve_pretrained
from covidct.train.config import TrainConfig
from covidct.train.trainer import fit

REPO = Path(__file__).resolve().parent.parent
N_FOLDS = 5
STUDY_RESULTS = REPO / "bench" / "results" / "recipes.json"
REFERENCE_BUDGET = 20.0  # minutes a fold model; the budget study (issue 13) compares other budgets with it
BUDGET_STUDY_RECIPE = "full-augmentation"  # the default when the budget study ran
SELECTIONS = ("fold", "inner")
# Named recipes: TrainConfig options on top of covidct's defaults (max_minutes and seed: the command's).
# "default" is always covidct's default. The default changed twice, and each time the rows of the recipe
# that became it were relabelled "default" and the earlier default's rows took a name of their own: on
# 2026-12-03 it took --vary-export --fill-padding (the rows of the recipe then called "export"); on 2026-12-08
# it became peer-like-circle (those rows), and the default before it is "full-augmentation", which every
# recipe measured before states underneath its own options, so that each keeps what its rows ran with.
_FULL_AUGMENTATION = {
    "epochs": 20,
    "batch_size": 32,
    "lr": 1e-3,
    "backbone_lr_factor": 0.1,
    "weight_decay": 0.05,
    "warmup_epochs": 1.0,
    "patience": 8,
    "ema_epochs": 1.0,
    "standardise_intensity": False,
    "circular_field": False,
    "vary_export": True,
    "narrow_windows": False,
    "augmentation": "full",
}
_FULL_AUGMENTATION_LINEAR = {**_FULL_AUGMENTATION, "epochs": None}  # 100 epochs for the linear head
_BEFORE_EXPORT = {"vary_export": False, "fill_padding": False}
_EXPORT = {"vary_export": True, "fill_padding": True}  # stated where a recipe was measured before the change
_WHOLE_IMAGE = {"crop_field": False, "remove_annotations": False}
# The peer's update count and augmentation: batch 10, ~28 epochs in 20 minutes, crop and flip only.
_PEER_STEPS = {"augmentation": "light", "batch_size": 10, "epochs": 28, "patience": 28}
# The peer's optimiser as far as covidct's trainer expresses it (Adam: one learning rate of 1e-4, no weight
# decay, no warm-up, no weight average); the cosine decay stays.
_PEER_OPTIMISER = {
    "lr": 1e-4,
    "backbone_lr_factor": 1.0,
    "weight_decay": 0.0,
    "warmup_epochs": 0.0,
    "ema_epochs": None,
}
# The peer's steps and optimiser with the padding fill and the standardisation, no export variation.
_PEER_LIKE_STANDARDISE = {
    **_PEER_STEPS,
    **_PEER_OPTIMISER,
    "vary_export": False,
    "fill_padding": True,
    "standardise_intensity": True,
}
# peer-like-standardise with the narrower-window augmentation and the circle inscribed in the body's box.
_PEER_LIKE_CIRCLE = {**_PEER_LIKE_STANDARDISE, "narrow_windows": True, "circular_field": True}
# Recipes measured while full-augmentation was the default ("the default" in their comments): their own
# options on top of it.
_EARLIER_RECIPES = {
    "no-export": _BEFORE_EXPORT,  # the default until 2026-12-03
    "export-aug-only": {"fill_padding": False},
    # The pre-export default's optimiser and site steps with the peer's batch of 10 and its epoch count at 20
    # minutes: 20 epochs at batch 32 are ~270 updates, the peer's ~1,200 (is the default update-starved?).
    "more-steps": {"batch_size": 10, "epochs": 28, "patience": 28, **_BEFORE_EXPORT},
    # A final-candidate shape: the peer's update count and augmentation (gray levels untouched), with the
    # export variation as the one intensity augmentation, and the padding fill.
    "light-export": {**_PEER_STEPS, **_EXPORT},
    # light-export on the whole image (no annotation removal, no body crop), as the peer and linear-whole see
    # it: linear-whole beat linear by +0.017, and the peer, which sees the whole image, leads the default.
    "whole-light-export": {**_PEER_STEPS, **_EXPORT, **_WHOLE_IMAGE},
    # The peer's recipe in covidct's trainer: what is left differs from the peer by the cosine decay, the
    # class weights (~1 on UCSD) and the square resize (the peer keeps the aspect and centre-crops). An
    # ablation probe, first on the fold where the peer leads most.
    "peer-like": {**_PEER_STEPS, **_PEER_OPTIMISER, **_WHOLE_IMAGE, **_BEFORE_EXPORT},
    # peer-like with the export variation and the padding fill: a default candidate if peer-like holds up.
    "peer-like-export": {**_PEER_STEPS, **_PEER_OPTIMISER, **_WHOLE_IMAGE},
    # Frozen ImageNet features and a logistic head (minutes, not tens): a fast baseline, and with "-whole"
    # a cheap probe of what the site steps (annotation removal, body crop) cost or give the features.
    "linear": {"mode": "linear", "fill_padding": False},
    "linear-whole": {"mode": "linear", "fill_padding": False, **_WHOLE_IMAGE},
    # The default recipe (full-augmentation; pre-train with --no-standardise-intensity --no-circular-field to
    # match its site steps) from a self-supervised backbone (`covidct pretrain`), named by --backbone: one per
    # fold, pre-trained on that fold's training rows (--pretrain-manifests), so that its fold scores are as
    # honest as the other recipes'; a backbone that saw a slice the row selects or scores on is refused.
    "ssl": {"backbone": None},
    # The default's schedule without its 20-epoch cap and early stop, so that it spends whatever budget it is
    # given: the budget study's long rows (the default stops after 17-20 epochs, 10-16 minutes on UCSD, so
    # more minutes alone change nothing there).
    "long-schedule": {"epochs": 200, "patience": 200},
    # Regularisers of the loss (covidct.train.loss) on top of the default: mixup at a fine-tuning strength
    # (alpha 0.2; 1.0 is the from-scratch ImageNet setting) and the usual label smoothing of 0.1.
    "mixup": {"mixup_alpha": 0.2},
    "label-smoothing": {"label_smoothing": 0.1},
    # Layer-wise learning-rate decay on top of the default's backbone factor: layer3 at half layer4's rate,
    # the stem at 1/16 (item 3 of issue 13).
    "layer-lr-decay": {"layer_lr_decay": 0.5},
    # A larger input (item 3: 224 / 288 / 320): 1.65x the pixels of 224, so about 1.65x the time an epoch
    # and fewer epochs in the same budget; 68% of UCSD train+val slices have a short side above 224 px
    # (median 288), so 224 discards detail they have.
    "input-288": {"image_size": 288},
    "input-320": {"image_size": 320},
    # The two that each gained a little under the noise floor, together: input-288 stopped on its 20-epoch
    # cap or patience inside 20 minutes, and long-schedule gained +0.013 at 40; measured at 40 minutes (the
    # issue's 60-minute budget allows it), against the default at 20 minutes and long-schedule at 40.
    "input-288-long": {"image_size": 288, "epochs": 200, "patience": 200},
    # The standardisation of item 5 on top of the default: the body's 1st/99th percentiles map to 0 and 1
    # before the network, which undoes a linear window change (a wider window, a raised level) on any slice,
    # at inference too. Its re-export rows say whether the decisions then hold within the 0.10 target.
    "standardise": {"standardise_intensity": True},
    # peer-like (the strongest in-domain recipe in covidct's trainer, and the one re-exports move most) with
    # the padding fill and the standardisation in place of the export variation: can a deterministic step buy
    # the robustness that the variation bought at peer-like's cost (peer-like-export -0.032 vs peer-like)?
    "peer-like-standardise": {**_PEER_LIKE_STANDARDISE, **_WHOLE_IMAGE},
    # peer-like-standardise on the body crop (the field-of-view fixes of sessions 29-30 in place), with the
    # clipping of narrower windows as its one gray-level augmentation: the standardisation undoes wider
    # windows, the crop leaves a field of view's padding out, and what neither undoes is what a narrow window
    # clips (peer-like-standardise: padded exports -0.11 to -0.32 sensitivity, the narrow window -0.23 to
    # -0.55 specificity).
    "peer-like-standardise-clip": {**_PEER_LIKE_STANDARDISE, "narrow_windows": True},
    # peer-like-standardise-clip on the circle inscribed in the body's box (``circular_field``): its padded
    # re-exports lost sensitivity because the padding (filled to air) blacked out corners that a tight crop
    # shows as tissue, and it had learnt dark corners as non-COVID framing (session 36's probe). With every
    # slice cut to the circle, a gray-padded export and the shipped slice differ by a few percent of zoom.
    "peer-like-standardise-clip-circle": _PEER_LIKE_CIRCLE,
}
RECIPES = {
    # peer-like-standardise-clip-circle's options, measured after RandomNarrowWindow took its corrected form
    # on 2026-12-07 (a stretch from black or to white, what a narrower export looks like once standardised;
    # session 36's probe; the rows of the two recipes above ran with the older form, a narrowing around the
    # middle gray) under the name peer-like-circle, which became the default on 2026-12-08.
    "default": {},
    # What `covidct train --mode linear` does since the default changed (the peer's learning rate of 1e-4 and
    # batch of 10 for the logistic head, the standardisation and the circle): does linear still hold?
    "default-linear": {"mode": "linear"},
    "full-augmentation": _FULL_AUGMENTATION,
    **{
        name: {
            **(_FULL_AUGMENTATION_LINEAR if options.get("mode") == "linear" else _FULL_AUGMENTATION),
            **options,
        }
        for name, options in _EARLIER_RECIPES.items()
    },
    "peer": None,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SOURCE_ROWS), default="ucsd")
    parser.add_argument(
        "--recipes", default="default,peer", help=f"comma-separated, of: {', '.join(RECIPES)}"
    )
    parser.add_argument("--folds", default="0,1,2,3,4", help="comma-separated fold numbers (0-4)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--max-minutes", type=float, default=7.0, help="training budget per fold model")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=STUDY_RESULTS)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where manifests and models go (default: a temporary folder)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many slices per fold and class (smoke tests only; such rows are marked)",
    )
    parser.add_argument(
        "--backbone",
        type=Path,
        default=None,
        help="for the ssl recipe: what `covidct pretrain` wrote from the fold's --pretrain-manifests rows",
    )
    parser.add_argument(
        "--pretrain-manifests",
        type=Path,
        default=None,
        help="only write, for each fold, the manifest of its training rows into this folder (for `covidct "
        "pretrain`: an ssl backbone per fold that never saw the rows the fold is selected or scored on)",
    )
    parser.add_argument(
        "--selection",
        choices=SELECTIONS,
        default="fold",
        help="fold: epoch and threshold chosen on the scored fold (optimistic); inner: on the next fold, "
        "left out of training, and the scored fold unseen",
    )
    parser.add_argument(
        "--any-host",
        action="store_true",
        help="train even where the budget is not comparable with the study's rows (no bf16 CPU: see above), "
        f"into an --out other than {STUDY_RESULTS.name}; the rows record the host",
    )
    parser.add_argument("--summary", action="store_true", help="only print the summary of --out")
    args = parser.parse_args()
    results = _read(args.out)
    if args.summary:
        print(summary_table(results["rows"]))
        return
    recipes, folds = _choose(args.recipes, RECIPES, "--recipes"), [int(f) for f in args.folds.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if not set(folds) <= set(range(N_FOLDS)):
        raise SystemExit(f"--folds must be numbers 0-{N_FOLDS - 1}; got {args.folds}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="covidct-recipes-"))
    rows = fold_rows(SOURCE_ROWS[args.dataset](args.shared), args.dataset)
    if args.pretrain_manifests:
        for fold in folds:
            training = [row for row in fold_split(rows, fold, args.selection) if row["split"] == "train"]
            name = f"{args.dataset}-fold{fold}-{args.selection}.csv"
            print(f"{write_manifest(training, args.pretrain_manifests / name)}: {len(training)} rows")
        return
    host = study_host(args.out, any_host=args.any_host)
    pretrained = resolve_pretrained("auto")
    results["recipes"] |= {name: _recipe_options(name, args.backbone) for name in recipes}
    results["exports"] = {name: vars(export) for name, export in EXPORTS.items()}
    ssl_backbone = read_backbone(args.backbone).backbone if "ssl" in recipes else None
    for fold in folds:
        split = _limited(fold_split(rows, fold, args.selection), args.limit)
        if ssl_backbone is not None:
            _refuse_backbone_that_saw(split, ssl_backbone, fold)
        for seed in seeds:
            for recipe in recipes:
                key = {
                    "dataset": args.dataset,
                    "recipe": recipe,
                    "options": results["recipes"][recipe],
                    "fold": fold,
                    "seed": seed,
                    "max_minutes": args.max_minutes,
                    "limit": args.limit,
                } | ({"selection": "inner"} if args.selection == "inner" else {})
                if any(all(row.get(k) == v for k, v in key.items()) for row in results["rows"]):
                    print(f"{key}: kept from {args.out}", flush=True)
                    continue
                tag = fold_model_tag(args.dataset, recipe, fold, seed, args.max_minutes, args.selection)
                options, out_dir = results["recipes"][recipe], workdir / tag
                record = _train_and_score(recipe, options, split, out_dir, args.max_minutes, seed, pretrained)
                results["rows"].append(
                    {
                        **key,
                        **record,
                        "host": host,
                        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
                    }
                )
                results["machine"] = machine_facts()
                _write(args.out, results)  # after every row: the study resumes from here
                print(
                    f"{tag}: slice ROC-AUC {record['val']['as shipped']['auc']}, "
                    f"patient {record['val']['as shipped'].get('patient_auc')}",
                    flush=True,
                )
    print(summary_table(results["rows"]))


def fold_model_tag(
    dataset: str, recipe: str, fold: int, seed: int, max_minutes: float, selection: str
) -> str:
    """The name of a fold model's folder under ``--workdir`` (``bench/ensembles.py`` finds models by it)."""
    tag = f"{dataset}-{recipe}-fold{fold}-seed{seed}-{max_minutes:g}min"
    return tag + ("-inner" if selection == "inner" else "")


def study_host(out: Path, *, any_host: bool) -> dict:
    """The host facts each row records (processor, device, bf16).

    Raises:
        SystemExit: the host does not train like the study's (a CPU that computes in bf16), and ``any_host``
            is not given or ``out`` is the study's file: its budgets buy another number of steps, and a row
            there would also count as done when a study host comes to train it.
    """
    facts = machine_facts()
    device = resolve_device("auto")
    host = {"processor": facts["processor"], "device": str(device), "bf16": facts["bf16"]}
    comparable = device.type == "cpu" and supports_bf16(device)
    if not comparable and (not any_host or out.resolve() == STUDY_RESULTS.resolve()):
        raise SystemExit(
            f"this host ({host['processor']}, {host['device']}, bf16 {host['bf16']}) does not train like the "
            "study's (a CPU that computes in bf16), so a --max-minutes budget here would not compare with "
            f"the rows in {STUDY_RESULTS.name}; run on such a host, or pass --any-host with another --out "
            "to record rows marked with this host"
        )
    return host


class FoldModel(NamedTuple):
    """Fold models ``recipes.py --workdir`` left, one per fold: recipe, budget and training seed."""

    recipe: str
    minutes: float
    seed: int = 0

    @property
    def name(self) -> str:
        """``RECIPE@MINUTES``, with ``/seedN`` for a seed other than 0 (the study's rows before seeds)."""
        return f"{self.recipe}@{self.minutes:g}" + (f"/seed{self.seed}" if self.seed else "")


def parse_fold_model(spec: str) -> FoldModel:
    """``RECIPE@MINUTES`` or ``RECIPE@MINUTES/seedN``: how ``bench/ensembles.py`` and ``bench/tta.py`` name
    fold models."""
    recipe, _, rest = spec.partition("@")
    minutes, _, seed = rest.partition("/seed")
    try:
        return FoldModel(recipe, float(minutes), int(seed or 0))
    except ValueError:
        raise SystemExit(
            f"{spec!r} is not RECIPE@MINUTES[/seedN], e.g. long-schedule@40 or default@20/seed1"
        ) from None


def fold_rows(rows: list[dict], dataset: str) -> list[dict]:
    """The rows cross-validation may use, each with its ``fold`` (0-4); test rows are dropped here, once."""
    if dataset == "sars":
        usable = [row for row in rows if _sars_block(row) <= 8]
        return [{**row, "fold": min(_sars_block(row) // 2, N_FOLDS - 1)} for row in usable]
    usable = [row for row in rows if row["split"] in ("train", "val")]
    label_of = {row["patient_id"]: row["label"] for row in usable}
    fold_of = {}
    for label in sorted(set(label_of.values())):
        patients = sorted(p for p, patient_label in label_of.items() if patient_label == label)
        random.Random(0).shuffle(patients)
        fold_of |= {patient: i % N_FOLDS for i, patient in enumerate(patients)}
    return [{**row, "fold": fold_of[row["patient_id"]]} for row in usable]


def _sars_block(row: dict) -> int:
    return int(row["patient_id"].rpartition("block")[2])


def fold_split(rows: list[dict], fold: int, selection: str) -> list[dict]:
    """Rows with ``split`` train, val (where epoch and threshold are chosen) and, for ``inner`` selection,
    scored (``fold``, never trained or selected on); ``fold`` itself is dropped for the manifest."""
    chosen_on = fold if selection == "fold" else (fold + 1) % N_FOLDS

    def split_of(row_fold: int) -> str:
        if row_fold == chosen_on:
            return "val"
        return "scored" if row_fold == fold else "train"

    return [{**{k: v for k, v in row.items() if k != "fold"}, "split": split_of(row["fold"])} for row in rows]


def _recipe_options(name: str, backbone: Path | None) -> dict:
    """What a row records as its recipe: ``TrainConfig`` options, the peer's recipe, or for ``ssl`` the
    backbone folder and its weights' sha256 (so a row of another backbone is never taken for it)."""
    if RECIPES[name] is None:
        return PEER_RECIPE
    if name != "ssl":
        return RECIPES[name]
    if backbone is None:
        raise SystemExit("--recipes ssl needs --backbone DIR (a folder `covidct pretrain` wrote)")
    sha256 = read_backbone(backbone).backbone.facts["weights_sha256"]
    return {**RECIPES["ssl"], "backbone": str(backbone.absolute()), "backbone_sha256": sha256}


def _refuse_backbone_that_saw(rows: list[dict], backbone: Backbone, fold: int) -> None:
    """Stop before training when the ssl backbone was pre-trained on a slice this fold's model is selected
    or scored on (covidct's own test-split check, by content): its score would be optimistic."""
    held_out = [Path(row["path"]) for row in rows if row["split"] != "train"]
    try:
        refuse_seen_test_files(held_out, backbone, origin=Path(f"fold {fold}"))
    except InputError as error:
        raise SystemExit(f"{error}; for a fold, pre-train on its --pretrain-manifests rows") from None


def _train_and_score(
    recipe: str, options: dict, rows: list[dict], out_dir: Path, max_minutes: float, seed: int, pretrained
) -> dict:
    """Train one fold model with ``recipe`` (``options``: its ``_recipe_options``) and score its fold
    (the ``scored`` rows, else the validation rows) as shipped and re-exported."""
    train_rows = [row for row in rows if row["split"] == "train"]
    val_rows = [row for row in rows if row["split"] == "val"]
    scored_rows = [row for row in rows if row["split"] == "scored"] or val_rows
    started = time.perf_counter()
    if RECIPES[recipe] is None:
        peer = train_peer(train_rows, val_rows, max_minutes=max_minutes, pretrained=pretrained, seed=seed)
        scorer, threshold = peer.score, peer.threshold
        facts = {
            "epochs_run": peer.epochs_run,
            "best_epoch": peer.best_epoch,
            "val_auc_by_epoch": [round(a, 4) for a in peer.val_auc_by_epoch],
        }
    else:
        train_options = {k: v for k, v in options.items() if k != "backbone_sha256"}
        config = TrainConfig(max_minutes=max_minutes, seed=seed, **train_options)
        manifest = read_manifest(
            write_manifest(train_rows + val_rows, out_dir.parent / f"{out_dir.name}.csv")
        )
        trained = fit(manifest, out_dir, config, pretrained=pretrained, callbacks=EpochPrinter(out_dir.name))
        scorer, threshold = card_scorer(trained.model_dir)
        facts = {
            "epochs_run": trained.card.training["epochs_run"],
            "best_epoch": trained.card.training["best_epoch"],
            "val_auc_by_epoch": _val_auc_by_epoch(trained.model_dir / "train_log.csv"),
        }
    train_s = round(time.perf_counter() - started, 1)
    val = score_variants(
        scorer,
        threshold,
        decode_grays(scored_rows),
        labels_of(scored_rows),
        groups=[row["patient_id"] for row in scored_rows],
    )
    return {
        "train_wall_time_s": train_s,
        **facts,
        "threshold": threshold,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "n_scored": len(scored_rows),
        "val": val,
    }


def _val_auc_by_epoch(train_log: Path) -> list[float]:
    """The validation ROC-AUC of each epoch, from the ``train_log.csv`` that ``covidct train`` writes."""
    with train_log.open(newline="", encoding="utf-8") as handle:
        return [round(float(record["val_auc"]), 4) for record in csv.DictReader(handle)]


def summary_table(rows: list[dict]) -> str:
    """Mean ± sd over folds (a fold's seeds averaged first) per (dataset, recipe, budget, selection);
    re-exports: mean, largest abs. change over all runs; then each recipe minus the default, minus
    full-augmentation (the default before 2026-12-08) and minus the peer on paired folds.

    The issue's targets bound the change either way: AUC within 0.03, sensitivity and specificity within 0.10.
    """
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("limit") is None:
            key = (row["dataset"], row["recipe"], row["max_minutes"], row.get("selection", "fold"))
            cells.setdefault(key, []).append(row)
    lines = [
        "| dataset | recipe | budget (min) | folds | epochs | slice ROC-AUC | patient ROC-AUC "
        "| re-exports vs as shipped, mean / max abs. change: AUC | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, recipe, budget, selection), cell in sorted(cells.items()):
        deltas = {
            key: [
                v["delta"][key]
                for r in cell
                for v in r["val"].values()
                if "delta" in v and v["delta"][key] is not None
            ]
            for key in ("auc", "sensitivity", "specificity")
        }
        shown = [
            f"{statistics.fmean(map(abs, d)):.3f} / {max(map(abs, d)):.3f}" if d else "n/a"
            for d in deltas.values()
        ]
        seeds = sorted({r["seed"] for r in cell})
        folds = ",".join(str(fold) for fold in sorted({r["fold"] for r in cell}))
        if len(seeds) > 1:
            folds += f" (seeds {','.join(map(str, seeds))})"
        epochs = "/".join(str(r["epochs_run"]) for r in cell)
        lines.append(
            f"| {dataset} | {_label(recipe, selection)} | {budget:g} | {folds} | {epochs} "
            f"| {mean_sd(_fold_means(cell, 'auc'))} "
            f"| {mean_sd(_fold_means(cell, 'patient_auc'))} | {' | '.join(shown)} |"
        )
    tables = [
        _paired_table(cells, f"recipe - {name}", _same_budget(name))
        for name in ("default", BUDGET_STUDY_RECIPE, "peer")
    ]
    heading = f"budget - {BUDGET_STUDY_RECIPE} at {REFERENCE_BUDGET:g} min"
    tables.append(_paired_table(cells, heading, _budget_study_reference))
    return "\n\n".join(["\n".join(lines), *tables])


def _fold_means(cell: list[dict], level: str) -> list[float]:
    """One figure per fold, the mean over its seeds, so that a fold run with more seeds weighs no more."""
    by_fold: dict[int, list[float]] = {}
    for row in cell:
        value = row["val"]["as shipped"].get(level)
        if value is not None:
            by_fold.setdefault(row["fold"], []).append(value)
    return [statistics.fmean(values) for _, values in sorted(by_fold.items())]


def _label(recipe: str, selection: str) -> str:
    return recipe if selection == "fold" else f"{recipe} (inner selection)"


def _same_budget(reference_recipe: str) -> Callable[[tuple], tuple | None]:
    """Pairs each recipe with ``reference_recipe`` at the same budget and selection."""

    def reference_of(key: tuple) -> tuple | None:
        dataset, recipe, budget, selection = key
        return None if recipe == reference_recipe else (dataset, reference_recipe, budget, selection)

    return reference_of


def _budget_study_reference(key: tuple) -> tuple | None:
    """Pairs each cell at another budget with ``BUDGET_STUDY_RECIPE`` at ``REFERENCE_BUDGET`` minutes (the
    budget study: what other minutes, and the schedule spending them, give over the setting shipped then)."""
    dataset, _recipe, budget, selection = key
    return None if budget == REFERENCE_BUDGET else (dataset, BUDGET_STUDY_RECIPE, REFERENCE_BUDGET, selection)


def _paired_table(
    cells: dict[tuple, list[dict]], heading: str, reference_of: Callable[[tuple], tuple | None]
) -> str:
    """Each cell minus its reference cell (``reference_of(key)``) on the folds and seeds both were measured
    on (paired: less noise)."""
    lines = [
        f"| dataset | recipe | budget (min) | {heading}: paired folds "
        "| delta slice ROC-AUC | 95% CI | delta patient ROC-AUC | 95% CI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, cell in sorted(cells.items()):
        reference_key = reference_of(key)
        reference = {(r["fold"], r["seed"]): r for r in cells.get(reference_key, [])}
        pairs = [(r, reference[(r["fold"], r["seed"])]) for r in cell if (r["fold"], r["seed"]) in reference]
        if not pairs:
            continue
        dataset, recipe, budget, selection = key
        deltas = {
            level: [
                _delta(r["val"]["as shipped"].get(level), d["val"]["as shipped"].get(level)) for r, d in pairs
            ]
            for level in ("auc", "patient_auc")
        }
        lines.append(
            f"| {dataset} | {_label(recipe, selection)} | {budget:g} | {len(pairs)} "
            f"| {mean_sd(deltas['auc'], signed=True)} "
            f"| {paired_ci(deltas['auc'])} | {mean_sd(deltas['patient_auc'], signed=True)} "
            f"| {paired_ci(deltas['patient_auc'])} |"
        )
    return "\n".join(lines)


def paired_ci(deltas: list[float | None], level: float = 0.95) -> str:
    """Student-t interval of the mean paired difference over folds (folds share training data, so it is
    somewhat too narrow; Nadeau & Bengio 2003); "n/a" below two pairs."""
    values = [d for d in deltas if d is not None]
    if len(values) < 2:
        return "n/a"
    half = student_t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    mean = statistics.fmean(values)
    return f"[{mean - half:+.3f}, {mean + half:+.3f}]"


def _delta(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def mean_sd(values: list[float | None], *, signed: bool = False) -> str:
    """Mean ± sample sd (the mean alone for one value); "n/a" without values."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = f"{statistics.fmean(values):+.3f}" if signed else f"{statistics.fmean(values):.3f}"
    return f"{mean} ± {statistics.stdev(values):.3f}" if len(values) > 1 else mean


def _read(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"rows": [], "recipes": {}, "exports": {}}


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
