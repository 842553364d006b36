"""Evaluate a model directory on a dataset split: predictions, metrics with CIs, figures and report."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidct.data.dataset import decode_slices
from covidct.data.manifest import Manifest
from covidct.data.splits import assign_splits
from covidct.errors import CovidctWarning, InputError
from covidct.evaluate.aggregate import Aggregate
from covidct.evaluate.evaluation import EvaluationResult, evaluation_metrics
from covidct.evaluate.report import write_report
from covidct.io.discover import InputFailure
from covidct.model.checkpoint import load_model_dir
from covidct.model.device import Device, resolve_device, supports_bf16
from covidct.model.forward import calibrated_probabilities, prepare_for_inference

ALL_SPLITS = "all"


@dataclass(frozen=True)
class EvaluationRun:
    """The metrics, where the report is, how many slices were scored and which files failed."""

    result: EvaluationResult
    report_path: Path
    n_slices: int
    failures: list[InputFailure]
    notes: list[str]


def evaluate_model(
    model_dir: Path,
    manifest: Manifest,
    out_dir: Path,
    *,
    split: str = "test",
    aggregate: Aggregate = Aggregate.MEAN,
    device: Device = Device.AUTO,
    n_resamples: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationRun:
    """Score ``manifest``'s ``split`` (or every row with ``split="all"``) and write the report to ``out_dir``.

    Raises:
        ModelDirError: the model directory is unusable.
        InputError: the classes differ from the model's, or nothing in the split could be decoded.
    """
    model, card = load_model_dir(model_dir)
    if tuple(manifest.classes) != tuple(card.classes):
        raise InputError(f"classes {list(manifest.classes)} differ from the model's {list(card.classes)}", path=manifest.origin)
    part, notes = _select_split(manifest, split, card.training, card.data.get("manifest_sha256"))
    torch_device = resolve_device(device)
    decoded = decode_slices([s.path for s in part.samples], card.preprocessing.image_size, progress=progress)
    if len(decoded.indices) == 0:
        raise InputError(f"no image of the {split} split could be decoded ({len(decoded.failures)} failures)", path=manifest.origin)
    net = prepare_for_inference(model, torch_device)
    probabilities = calibrated_probabilities(net, card, decoded.images, device=torch_device, use_bf16=supports_bf16(torch_device))
    samples = [part.samples[i] for i in decoded.indices]
    prob = probabilities[:, card.positive_index].numpy().astype(np.float64)
    y_true = np.array([s.label == card.positive_index for s in samples], dtype=int)
    groups = [s.group for s in samples] if part.has_patient_ids else None
    result = evaluation_metrics(y_true, prob, card.decision.threshold, groups=groups, aggregate=aggregate, n_resamples=n_resamples)
    notes += [f"{len(decoded.failures)} file(s) could not be decoded and were not scored: see failures.csv"] if decoded.failures else []
    out_dir = Path(out_dir)
    report = write_report(
        out_dir, result, y_true=y_true, prob=prob, threshold=card.decision.threshold, model_card=card.to_dict(),
        title=f"covidct evaluation: {manifest.origin.name}, split {split}", class_names=(_negative_name(card.classes, card.positive_class), card.positive_class),
        extra_notes=notes,
    )
    _write_rows(out_dir / "predictions.csv", ["path", "patient_id", "label", "prob_covid"], [(s.path, s.group or "", card.classes[s.label], f"{p:.6f}") for s, p in zip(samples, prob, strict=True)])
    _write_rows(out_dir / "failures.csv", ["path", "reason"], [(f.path, f.reason) for f in decoded.failures])
    return EvaluationRun(result, report, len(samples), decoded.failures, notes)


def _select_split(manifest: Manifest, split: str, training: dict, trained_sha256: str | None) -> tuple[Manifest, list[str]]:
    """Rows of ``split``; without a split column, rebuild the split ``train`` made (same seed, same fractions)."""
    if split == ALL_SPLITS:
        return manifest, [f"Evaluated on every row of {manifest.origin.name}."]
    notes = []
    if not manifest.has_splits:
        if manifest.sha256() != trained_sha256:
            message = f"{manifest.origin}: differs from the training data, so the rebuilt '{split}' split may overlap the data the model was trained on"
            warnings.warn(message, CovidctWarning, stacklevel=3)
            notes.append(message)
        seed, val_fraction, test_fraction = training.get("seed", 0), training.get("val_fraction", 0.15), training.get("test_fraction", 0.15)
        manifest = assign_splits(manifest, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        notes.append(f"No split column: the {split} split was rebuilt as in training (seed {seed}, grouped by patient where ids exist).")
    part = manifest.select(split)
    if not part.samples:
        raise InputError(f"no rows in split '{split}'; use --split train, val, test or all", path=manifest.origin)
    return part, notes


def _negative_name(classes: tuple[str, ...], positive: str) -> str:
    others = [name for name in classes if name != positive]
    return others[0] if len(others) == 1 else f"not {positive}"


def _write_rows(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
