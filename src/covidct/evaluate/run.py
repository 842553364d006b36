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
from covidct.evaluate.evaluation import EvaluationResult, evaluation_metrics
from covidct.evaluate.gallery import build_gallery, gallery_section
from covidct.evaluate.metrics import ece_sampling_floor
from covidct.evaluate.report import write_report
from covidct.evaluate.site_shift import SiteShift, detect_site_shift, slice_statistics
from covidct.infer.engine_kind import Engine
from covidct.infer.predictor import load_model
from covidct.io.failures import InputFailure
from covidct.model.card import ModelCard
from covidct.model.decision import (
    DEFAULT_TOPK_FRACTION,
    Aggregate,
    card_study_rule,
    describe_rule,
    negative_name,
)
from covidct.model.device import Device
from covidct.model.ood import OodDetector
from covidct.run_dir import claim_run_dir

ALL_SPLITS = "all"


@dataclass(frozen=True)
class EvaluationRun:
    """The metrics, where the report is, how many slices were scored and which files failed.

    ``n_flagged`` counts the slices the out-of-distribution guard flagged (None for a model without
    one); they are scored like the others, so the metrics cover every decoded slice. ``site_shift``
    compares the test slices with the training data (None for a card without training statistics).
    """

    result: EvaluationResult
    report_path: Path
    n_slices: int
    failures: list[InputFailure]
    notes: list[str]
    n_flagged: int | None = None
    site_shift: SiteShift | None = None


def evaluate_model(
    model_dir: Path,
    manifest: Manifest,
    out_dir: Path,
    *,
    split: str = "test",
    aggregate: Aggregate | None = None,
    device: Device = Device.AUTO,
    engine: Engine = Engine.TORCH,
    n_resamples: int = 1000,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> EvaluationRun:
    """Score ``manifest``'s ``split`` (or every row with ``split="all"``) and write the report to ``out_dir``.

    The slices are scored by ``engine`` exactly as ``load_model(model_dir, engine=engine)`` predicts
    them, so the metrics are those of the model a user deploys (the int8 export's included). Patient-level
    metrics aggregate each patient's slices by the model card's study rule, the one predict applies to
    a study, unless ``aggregate`` overrides it (TOPK then averages the top 25%).
    ``out_dir`` must be new, empty or a covidct evaluation, unless ``overwrite`` (see ``covidct.run_dir``).

    Raises:
        ModelDirError: the model directory is unusable, or has no export for ``engine``.
        OptionError: an ONNX ``engine`` with ``device`` cuda, or ``out_dir`` holds other files.
        InputError: the classes differ from the model's, or nothing in the split could be decoded.
    """
    claim_run_dir(Path(out_dir), "evaluate", overwrite=overwrite)
    predictor = load_model(model_dir, device=device, engine=engine)
    card, detector = predictor.card, predictor.detector
    if tuple(manifest.classes) != tuple(card.classes):
        raise InputError(
            f"classes {list(manifest.classes)} differ from the model's {list(card.classes)}",
            path=manifest.origin,
        )
    part, notes = _select_split(manifest, split, card.training, card.data.get("manifest_sha256"))
    decoded = decode_slices([s.path for s in part.samples], card.preprocessing, progress=progress)
    if len(decoded.indices) == 0:
        raise InputError(
            f"no image of the {split} split could be decoded ({len(decoded.failures)} failures)",
            path=manifest.origin,
        )
    probabilities, ood_scores = predictor.score(decoded.images)
    prob = probabilities[:, card.positive_index].astype(np.float64)
    samples = [part.samples[i] for i in decoded.indices]
    y_true = np.array([s.label == card.positive_index for s in samples], dtype=int)
    groups = [s.group for s in samples] if part.has_patient_ids else None
    rule, topk_fraction, rule_note = _patient_rule(card, aggregate)
    result = evaluation_metrics(
        y_true,
        prob,
        card.decision.threshold,
        groups=groups,
        aggregate=rule,
        topk_fraction=topk_fraction,
        n_resamples=n_resamples,
    )
    engine = Engine(engine)
    notes.append(f"Scored by the {engine} engine, as 'covidct predict --engine {engine}' scores them.")
    notes += [rule_note] if groups is not None else []
    notes += (
        [f"{len(decoded.failures)} file(s) could not be decoded and were not scored: see failures.csv"]
        if decoded.failures
        else []
    )
    notes.append(_ood_note(detector, ood_scores))
    notes.append(_ece_note(result.slice_level.estimates["ece"]["value"], prob))
    site_shift = _site_shift(card, decoded.images, ood_scores)
    # Grad-CAM runs the torch network whatever the engine (loaded from the directory for an ONNX engine).
    gallery = build_gallery(
        predictor.model,
        card,
        decoded.images,
        paths=[s.path for s in samples],
        y_true=y_true,
        prob=prob,
        device=predictor.device,
    )
    out_dir = Path(out_dir)
    report = write_report(
        out_dir,
        result,
        y_true=y_true,
        prob=prob,
        threshold=card.decision.threshold,
        model_card=card.to_dict(),
        title=f"covidct evaluation: {manifest.origin.name}, split {split}",
        class_names=(negative_name(card), card.positive_class),
        extra_notes=notes,
        gallery_html=gallery_section(gallery),
        site_shift=site_shift,
    )
    passed = None if ood_scores is None else detector.is_in_distribution(ood_scores)
    _write_predictions(out_dir / "predictions.csv", samples, card.classes, prob, passed, ood_scores)
    _write_rows(out_dir / "failures.csv", ["path", "reason"], [(f.path, f.reason) for f in decoded.failures])
    n_flagged = None if passed is None else int((~passed).sum())
    return EvaluationRun(result, report, len(samples), decoded.failures, notes, n_flagged, site_shift)


def _patient_rule(card: ModelCard, aggregate: Aggregate | None) -> tuple[Aggregate, float, str]:
    """The patient aggregation rule, its top-k fraction, and a report note saying where the rule came from."""
    card_rule, card_fraction = card_study_rule(card.decision)
    described = describe_rule(card_rule, card_fraction)
    if aggregate is None:
        return (
            card_rule,
            card_fraction,
            f"Patient aggregation rule: {described}, the model "
            f"card's study rule ({card.decision.study_rule_source}).",
        )
    override = Aggregate(aggregate)
    return (
        override,
        DEFAULT_TOPK_FRACTION,
        f"Patient aggregation rule: {describe_rule(override)}, set by "
        f"--aggregate instead of the model card's study rule ({described}).",
    )


def _ece_note(ece: float, prob: np.ndarray) -> str:
    """Slice-level ECE next to what a perfectly calibrated model would show here (binned ECE is biased
    upward on small sets)."""
    return (
        f"Slice-level ECE {ece:.3f}; a perfectly calibrated model with these probabilities would show "
        f"{ece_sampling_floor(prob):.3f} on average on {len(prob)} "
        "slices (labels drawn from the probabilities): "
        "an ECE near that floor is as calibrated as this test set can show."
    )


def _write_predictions(
    path: Path,
    samples: list,
    classes: tuple[str, ...],
    prob: np.ndarray,
    passed: np.ndarray | None,
    scores: np.ndarray | None,
) -> None:
    """predictions.csv: one row per scored slice; the guard's columns are empty for a model without one."""
    passed_text = [""] * len(samples) if passed is None else [str(bool(value)) for value in passed]
    scores_text = [""] * len(samples) if scores is None else [f"{score:.3f}" for score in scores]
    rows = [
        (s.path, s.group or "", classes[s.label], f"{p:.6f}", ok, score)
        for s, p, ok, score in zip(samples, prob, passed_text, scores_text, strict=True)
    ]
    _write_rows(path, ["path", "patient_id", "label", "prob_covid", "in_distribution", "ood_score"], rows)


def _site_shift(card: ModelCard, slices: np.ndarray, ood_scores: np.ndarray | None) -> SiteShift | None:
    """Compare the test slices (and their OOD scores) with the training statistics
    the card records, if any."""
    reference = card.data.get("site_statistics")
    if reference is None:
        return None
    statistics = slice_statistics(slices) | ({} if ood_scores is None else {"ood_score": ood_scores})
    return detect_site_shift(reference, statistics)


def _ood_note(detector: OodDetector | None, scores: np.ndarray | None) -> str:
    if detector is None:
        return (
            "The model has no out-of-distribution guard (trained with an older "
            "covidct): no slice could be flagged as not a chest CT slice."
        )
    flagged = int((~detector.is_in_distribution(scores)).sum())
    return (
        f"Out-of-distribution guard: {flagged} of {len(scores)} slices "
        f"({flagged / len(scores):.1%}) were flagged as not looking like "
        f"the training CT slices (OOD score > {detector.threshold:.1f}; "
        "about 5% of validation slices are by design). "
        "They are still scored: every metric above covers all decoded slices."
    )


def _select_split(
    manifest: Manifest, split: str, training: dict, trained_sha256: str | None
) -> tuple[Manifest, list[str]]:
    """Rows of ``split``; without a split column, rebuild the split ``train`` made (same
    seed, same fractions)."""
    if split == ALL_SPLITS:
        return manifest, [f"Evaluated on every row of {manifest.origin.name}."]
    notes = []
    if not manifest.has_splits:
        if manifest.sha256() != trained_sha256:
            message = (
                f"{manifest.origin}: differs from the training data, so the rebuilt "
                f"'{split}' split may overlap the data the model was trained on"
            )
            warnings.warn(message, CovidctWarning, stacklevel=3)
            notes.append(message)
        seed, val_fraction, test_fraction = (
            training.get("seed", 0),
            training.get("val_fraction", 0.15),
            training.get("test_fraction", 0.15),
        )
        manifest = assign_splits(manifest, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        notes.append(
            f"No split column: the {split} split was rebuilt as in "
            f"training (seed {seed}, grouped by patient where ids exist)."
        )
    part = manifest.select(split)
    if not part.samples:
        raise InputError(
            f"no rows in split '{split}'; use --split train, val, test or all", path=manifest.origin
        )
    return part, notes


def _write_rows(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
