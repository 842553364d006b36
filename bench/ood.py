"""Out-of-distribution guard benchmark: how many non-CT images are flagged, and how many
real CT slices (not a test).

    .venv/bin/python bench/ood.py [--model ucsd=DIR] [--model sars=DIR] [--rethreshold-guard]
        [--shared ../shared/data] [--out bench/results/ood.json]

Each ``--model SOURCE=DIR`` is a model trained on one shared source (ucsd: the UCSD official train/val
split; sars: SARS-CoV-2 blocks 0-7 with block 8 for validation). Without ``--model`` it first trains a
UCSD model (the default recipe with ``epochs=4``, which the JSON records). Non-CT images are made on
the fly from what ships offline: scikit-image's bundled photos (random crops and rescales), blank and
noise images, text documents rendered with Pillow's default font, and other medical-looking images
(the Shepp-Logan head phantom, retina and microscopy images from scikit-image, synthetic chest
radiographs). Real CT slices: the UCSD official test split and SARS-CoV-2 block 9.

Targets: at least 95% of non-CT images flagged, at most 5% of held-out CT slices flagged. Held-out means
the test split of the source the model was trained on (its threshold passes 95% of that source's
validation slices). The other source's test split is reported too, as a site-shift figure: a model
flagging slices of a hospital it never saw is the guard doing its job, and issue 7's site-shift flag
reads the same scores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from machine import machine_facts
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from shared_datasets import (
    SOURCE_ROWS,
    decode_validation,
    parse_model_spec,
    sars_rows,
    ucsd_rows,
    write_manifest,
)
from skimage import data as skdata
from skimage.transform import rotate

from covidct.data.manifest import read_manifest
from covidct.infer.predictor import Predictor, load_model
from covidct.model.card import write_card
from covidct.model.ood import NOT_CT_LABEL, save_detector
from covidct.model.pretrained import resolve_pretrained
from covidct.train.callbacks import TrainCallbacks
from covidct.train.config import TrainConfig
from covidct.train.ood_fit import threshold_on_validation
from covidct.train.trainer import fit

REPO = Path(__file__).resolve().parent.parent
TARGET_NON_CT_FLAGGED = 0.95
TARGET_CT_FLAGGED = 0.05
OOD_STAGE = "fitting the out-of-distribution guard on the training slices"
Images = Iterator[tuple[str, np.ndarray]]


TEST_SETS = {"ucsd": "ucsd_test", "sars": "sars_block9"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="SOURCE=DIR",
        help="a model trained on SOURCE (ucsd or sars); repeatable (default: train one on UCSD, 4 epochs)",
    )
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ood.json")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the model and the generated images go (default: a temporary folder)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rethreshold-guard",
        action="store_true",
        help=(
            "set each --model's guard threshold again with this covidct's rule (its source's "
            "validation split) in a copy under --workdir; the detector itself is kept"
        ),
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="covidct-ood-"))
    shared = args.shared.resolve()
    models = dict(_parse_model(text) for text in args.model) or {"ucsd": _train_ucsd(shared, workdir)}
    if args.rethreshold_guard:
        models = {
            source: _rethresholded(source, folder, facts, shared, workdir)
            for source, (folder, facts) in models.items()
        }
    ct_paths = {
        TEST_SETS["ucsd"]: _test_paths(ucsd_rows(shared)),
        TEST_SETS["sars"]: _test_paths(sars_rows(shared)),
    }
    non_ct_paths = {
        category: _write_images(make(np.random.default_rng(args.seed)), workdir / "non_ct" / category)
        for category, make in NON_CT_SETS.items()
    }
    results = {"machine": machine_facts(), "models": {}}
    for source, (model_dir, facts) in models.items():
        predictor = load_model(model_dir)
        entry = {
            "model": facts | {"ood": predictor.card.ood},
            "threshold": predictor.detector.threshold,
            "non_ct": {},
            "ct": {},
        }
        for category, paths in non_ct_paths.items():
            entry["non_ct"][category] = _flag_rate(predictor, paths, is_ct=False)
        for test_set, paths in ct_paths.items():
            entry["ct"][test_set] = _flag_rate(predictor, paths, is_ct=True) | {
                "held_out_same_source": test_set == TEST_SETS[source]
            }
        results["models"][source] = entry | {"summary": _summary(entry, own_test_set=TEST_SETS[source])}
        print(f"{source} model: {json.dumps(results['models'][source]['summary'])}", flush=True)
    results["summary"] = {
        "meets_non_ct_target": all(
            entry["summary"]["meets_non_ct_target"] for entry in results["models"].values()
        ),
        "meets_ct_target": all(entry["summary"]["meets_ct_target"] for entry in results["models"].values()),
        "held_out_ct_flag_rate": {
            source: entry["summary"]["held_out_ct_flag_rate"] for source, entry in results["models"].items()
        },
        "other_site_ct_flag_rate": {
            source: entry["summary"]["other_site_ct_flag_rate"] for source, entry in results["models"].items()
        },
        "non_ct_flag_rate": {
            source: entry["summary"]["non_ct_flag_rate"] for source, entry in results["models"].items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results["summary"], indent=2))
    print(f"wrote {args.out} (images in {workdir})")


def _parse_model(text: str) -> tuple[str, tuple[Path, dict]]:
    source, folder = parse_model_spec(text)
    return source, (folder, {"given": str(folder)})


def _rethresholded(
    source: str, model_dir: Path, facts: dict, shared: Path, workdir: Path
) -> tuple[Path, dict]:
    """A copy of ``model_dir`` whose guard threshold comes from ``threshold_on_validation`` on its
    source's validation split.

    The detector (class means, precision) depends only on the weights and the training slices, so it is
    kept; what a retrained model would change is the threshold rule, and that is recomputed here.
    """
    copy = workdir / f"rethresholded-{source}"
    shutil.copytree(model_dir, copy, dirs_exist_ok=True)
    predictor = load_model(copy)
    val_rows, decoded = decode_validation(SOURCE_ROWS[source](shared), predictor.card.preprocessing)
    fitted = threshold_on_validation(
        predictor.detector, predictor.ood_scores(decoded.images), [row["patient_id"] for row in val_rows]
    )
    card = replace(
        predictor.card,
        ood=save_detector(copy, fitted.detector, n_train=predictor.card.ood["n_train"], **fitted.facts),
    )
    write_card(copy, card)
    return copy, facts | {
        "guard_rethresholded": (
            "this covidct's threshold rule on the validation split; detector from the original model"
        )
    }


def _test_paths(rows: list[dict]) -> list[Path]:
    return [Path(row["path"]) for row in rows if row["split"] == "test"]


def _train_ucsd(shared: Path, workdir: Path) -> tuple[Path, dict]:
    config = TrainConfig(epochs=4)
    manifest = read_manifest(write_manifest(ucsd_rows(shared), workdir / "ucsd.csv"))
    stages = StageTimer()
    trained = fit(
        manifest, workdir / "model-ucsd", config, pretrained=resolve_pretrained("auto"), callbacks=stages
    )
    seconds = stages.seconds()
    facts = {
        "trained_by_bench": "UCSD official split, the default recipe except epochs=4",
        "config": config.to_dict(),
        "train_wall_time_s": round(sum(seconds.values()), 1),
        "stage_seconds": seconds,
        "ood_fit_share_of_training": round(seconds[OOD_STAGE] / sum(seconds.values()), 3),
        "validation_metrics": trained.card.validation_metrics,
    }
    return trained.model_dir, facts


class StageTimer(TrainCallbacks):
    """Wall time of each training stage (from one ``on_stage`` call to the next, the last
    one to ``seconds()``)."""

    def __init__(self) -> None:
        self.starts = [("decoding and epochs", time.perf_counter())]

    def on_stage(self, message: str) -> None:
        self.starts.append((message, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        ends = [start for _, start in self.starts[1:]] + [time.perf_counter()]
        return {name: round(end - start, 1) for (name, start), end in zip(self.starts, ends, strict=True)}


def _flag_rate(predictor: Predictor, paths: list[Path], *, is_ct: bool) -> dict:
    """Flag counts and score quantiles of one image set, with up to 20 of its errors (flagged CT,
    passed non-CT) by name."""
    run = predictor.predict(paths)
    if run.failures:
        raise SystemExit(f"{len(run.failures)} image(s) failed to decode, e.g. {run.failures[0]}")
    scores = np.array([p.ood_score for p in run.predictions])
    flagged = [p for p in run.predictions if p.label == NOT_CT_LABEL]
    return {
        "n": len(run.predictions),
        "flagged": len(flagged),
        "flag_rate": round(len(flagged) / len(run.predictions), 4),
        "score_quantiles": {
            q: round(float(np.quantile(scores, float(q))), 2) for q in ("0.0", "0.05", "0.5", "0.95", "1.0")
        },
        "errors": [Path(p.path).name for p in run.predictions if p.in_distribution != is_ct][:20],
    }


def _summary(entry: dict, *, own_test_set: str) -> dict:
    non_ct_n = sum(item["n"] for item in entry["non_ct"].values())
    non_ct_rate = sum(item["flagged"] for item in entry["non_ct"].values()) / non_ct_n
    held_out = entry["ct"][own_test_set]["flag_rate"]
    return {
        "non_ct_flag_rate": round(non_ct_rate, 4),
        "non_ct_n": non_ct_n,
        "non_ct_flag_rate_by_category": {name: item["flag_rate"] for name, item in entry["non_ct"].items()},
        "held_out_ct_flag_rate": held_out,
        "held_out_ct_n": entry["ct"][own_test_set]["n"],
        "other_site_ct_flag_rate": {
            name: item["flag_rate"] for name, item in entry["ct"].items() if name != own_test_set
        },
        "meets_non_ct_target": non_ct_rate >= TARGET_NON_CT_FLAGGED,
        "meets_ct_target": held_out <= TARGET_CT_FLAGGED,
        "targets": {
            "non_ct_flagged_at_least": TARGET_NON_CT_FLAGGED,
            "held_out_ct_flagged_at_most": TARGET_CT_FLAGGED,
        },
    }


def _write_images(images: Images, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, array in images:
        path = folder / f"{name}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return image


def _random_crop(rng: np.random.Generator, image: np.ndarray, *, min_fraction: float = 0.35) -> np.ndarray:
    """A crop of 35-90% of each side, anywhere in the image, with its aspect ratio changed by up to 4:3."""
    height, width = image.shape[:2]
    crop_h = int(height * rng.uniform(min_fraction, 0.9))
    crop_w = int(np.clip(crop_h * rng.uniform(0.75, 1.33) * width / height, 32, width))
    crop_h = max(crop_h, 32)
    top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    return image[top : top + crop_h, left : left + crop_w]


def _with_crops(rng: np.random.Generator, name: str, image: np.ndarray, crops: int) -> Images:
    image = _to_uint8(image)
    yield name, image
    for index in range(crops):
        yield f"{name}_crop{index}", np.ascontiguousarray(_random_crop(rng, image))


def natural_photos(rng: np.random.Generator) -> Images:
    """scikit-image's bundled photographs and graphics, whole and in 5 random crops each, plus 10 faces."""
    sources = {
        "astronaut": skdata.astronaut(),
        "camera": skdata.camera(),
        "coffee": skdata.coffee(),
        "chelsea": skdata.chelsea(),
        "cat": skdata.cat(),
        "rocket": skdata.rocket(),
        "coins": skdata.coins(),
        "horse": skdata.horse(),
        "moon": skdata.moon(),
        "hubble_deep_field": skdata.hubble_deep_field(),
        "brick": skdata.brick(),
        "grass": skdata.grass(),
        "gravel": skdata.gravel(),
        "clock": skdata.clock(),
        "colorwheel": skdata.colorwheel(),
        "logo": skdata.logo()[..., :3],
        "motorcycle": skdata.stereo_motorcycle()[0],
    }
    for name, image in sources.items():
        yield from _with_crops(rng, name, image, crops=5)
    for index, face in enumerate(skdata.lfw_subset()[::20]):
        yield (
            f"face{index}",
            np.asarray(Image.fromarray(_to_uint8(face)).resize((128, 128), Image.Resampling.BILINEAR)),
        )


WORDS = [
    "the",
    "patient",
    "was",
    "admitted",
    "with",
    "fever",
    "and",
    "cough",
    "chest",
    "imaging",
    "showed",
    "bilateral",
    "findings",
    "table",
    "results",
    "method",
    "analysis",
    "figure",
]


def _rendered_page(rng: np.random.Generator) -> np.ndarray:
    width, height = (int(rng.integers(400, 900)), int(rng.integers(400, 1100)))
    page = Image.new("L", (width, height), int(rng.integers(235, 256)))
    draw = ImageDraw.Draw(page)
    size = int(rng.integers(10, 30))
    font = ImageFont.load_default(size=size)
    y = int(rng.integers(10, 60))
    while y < height - size:
        words = rng.choice(WORDS, size=int(rng.integers(3, max(4, width // (size * 4)))))
        draw.text((int(rng.integers(10, 40)), y), " ".join(words), fill=int(rng.integers(0, 60)), font=font)
        y += int(size * rng.uniform(1.3, 2.2))
    return np.asarray(page)


def documents(rng: np.random.Generator) -> Images:
    """scikit-image's ``page`` and ``text`` (whole and cropped) and 40 rendered text
    pages of random layout."""
    yield from _with_crops(rng, "page", skdata.page(), crops=4)
    yield from _with_crops(rng, "text", skdata.text(), crops=4)
    for index in range(40):
        yield f"rendered{index}", _rendered_page(rng)


def blank(rng: np.random.Generator) -> Images:
    """Constant images (black, white, gray, random levels), some with faint sensor-like noise."""
    levels = [0, 255, 128, *rng.integers(0, 256, size=12).tolist()]
    for index, level in enumerate(levels):
        yield f"constant{index}_{level}", np.full((int(rng.integers(64, 512)),) * 2, level, np.uint8)
    for index in range(5):
        level = int(rng.integers(20, 236))
        yield f"faint_noise{index}", np.clip(level + rng.normal(0, 2, (256, 256)), 0, 255).astype(np.uint8)


def noise(rng: np.random.Generator) -> Images:
    """Uniform, Gaussian and salt-and-pepper noise, 10 each, at random sizes."""
    for index in range(10):
        side = int(rng.integers(64, 512))
        yield f"uniform{index}", rng.integers(0, 256, (side, side), dtype=np.uint8)
        gaussian = rng.normal(rng.uniform(60, 190), rng.uniform(15, 80), (side, side))
        yield f"gaussian{index}", np.clip(gaussian, 0, 255).astype(np.uint8)
        pepper = np.full((side, side), int(rng.integers(0, 256)), np.uint8)
        mask = rng.random((side, side))
        density = rng.uniform(0.05, 0.5)
        pepper[mask < density / 2] = 0
        pepper[mask > 1 - density / 2] = 255
        yield f"salt_pepper{index}", pepper


def _synthetic_radiograph(rng: np.random.Generator, size: int = 384) -> np.ndarray:
    """A frontal chest radiograph cartoon: bright soft tissue, dark lung fields, spine,
    ribs, heart shadow, blur."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.full((size, size), rng.uniform(0.05, 0.15), np.float32)
    image[((xx - 0.5) / 0.42) ** 2 + ((yy - 0.6) / 0.55) ** 2 <= 1] = rng.uniform(0.55, 0.75)
    for side in (-1, 1):
        lung = ((xx - 0.5 - side * 0.17) / 0.13) ** 2 + ((yy - 0.52) / 0.3) ** 2 <= 1
        image[lung] = rng.uniform(0.15, 0.3)
    image[np.abs(xx - 0.5) < 0.035] = 0.85
    image[((xx - 0.53) / 0.12) ** 2 + ((yy - 0.68) / 0.12) ** 2 <= 1] = 0.7
    for rib in range(8):
        center = 0.28 + rib * 0.06
        arc = np.abs(yy - center - 0.25 * (xx - 0.5) ** 2 * 4) < 0.008
        image[arc & (np.abs(xx - 0.5) > 0.04) & (np.abs(xx - 0.5) < 0.33)] += 0.25
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    blurred = Image.fromarray(_to_uint8(image)).filter(ImageFilter.GaussianBlur(rng.uniform(1, 3)))
    return np.asarray(blurred)


def medical_other(rng: np.random.Generator) -> Images:
    """Medical-looking images that are not chest CT: head phantom, retina, histology,
    microscopy, radiographs."""
    phantom = skdata.shepp_logan_phantom()
    for index in range(10):
        turned = rotate(phantom, rng.uniform(-30, 30), mode="constant")
        yield f"shepp_logan{index}", _to_uint8(np.clip(turned * rng.uniform(0.8, 1.5), 0, 1))
    yield from _with_crops(rng, "retina", skdata.retina(), crops=5)
    yield from _with_crops(rng, "microaneurysms", skdata.microaneurysms(), crops=0)
    yield from _with_crops(rng, "immunohistochemistry", skdata.immunohistochemistry(), crops=5)
    yield from _with_crops(rng, "cell", skdata.cell(), crops=4)
    for index in range(20):
        yield f"radiograph{index}", _synthetic_radiograph(rng)


NON_CT_SETS: dict[str, Callable[[np.random.Generator], Images]] = {
    "natural_photos": natural_photos,
    "documents": documents,
    "blank": blank,
    "noise": noise,
    "medical_other": medical_other,
}


if __name__ == "__main__":
    main()
