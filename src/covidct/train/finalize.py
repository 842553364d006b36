"""After the epochs: calibrate on validation data and describe the run in a model card."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version

import numpy as np
import torch

from covidct import __version__
from covidct.data.manifest import SPLITS, Manifest
from covidct.evaluate.metrics import binary_metrics
from covidct.io.failures import InputFailure
from covidct.model.card import Decision, ModelCard, calibrated_probabilities
from covidct.model.pretrained import Pretrained
from covidct.preprocess.transforms import Preprocessing
from covidct.train.calibration import choose_threshold, fit_calibration
from covidct.train.config import TrainConfig
from covidct.train.resume import Progress
from covidct.train.study_rule import choose_study_rule


@dataclass(frozen=True)
class RunFacts:
    """What the trainer knows about the run beyond the config: where it ran and how it went."""

    device: torch.device
    use_bf16: bool
    progress: Progress
    failures: list[InputFailure]
    split_method: str
    wall_time_s: float
    audit_warnings: list[str]


def build_card(
    manifest: Manifest,
    config: TrainConfig,
    *,
    val: tuple[torch.Tensor, torch.Tensor, list[str | None]],
    preprocessing: Preprocessing,
    pretrained: Pretrained,
    facts: RunFacts,
) -> ModelCard:
    """Fit calibration (temperature and class bias), threshold and the study aggregation rule on the
    validation split (never test); assemble the card.

    Args:
        val: the validation split's (N, C) logits, computed as inference will (mirror averaged when
            ``config.tta_hflip``), its (N,) class indices and its (N,) patient ids (None where unknown).
    """
    logits = val[0]
    temperature, class_bias = fit_calibration(logits, val[1])
    prob = calibrated_probabilities(logits.numpy(), temperature, class_bias)[:, manifest.positive_index]
    is_positive = (val[1] == manifest.positive_index).numpy().astype(int)
    threshold, rule = choose_threshold(is_positive, prob, target_sensitivity=config.target_sensitivity)
    study = choose_study_rule(is_positive, prob, val[2])
    decision = Decision(
        threshold=threshold,
        threshold_rule=rule,
        temperature=temperature,
        class_bias=class_bias,
        tta_hflip=config.tta_hflip,
        study_aggregate=study.rule.aggregate.value,
        study_topk_fraction=study.rule.topk_fraction,
        study_rule_source=study.source,
    )
    return ModelCard(
        classes=manifest.classes,
        positive_class=manifest.positive_class,
        stride_variant=pretrained.stride_variant,
        preprocessing=preprocessing,
        decision=decision,
        weights={"imagenet": pretrained.provenance}
        | ({"backbone": pretrained.backbone.facts} if pretrained.backbone else {}),
        data=_data_facts(manifest, facts),
        training={**config.to_dict(), **_run_facts(facts, config.resolved_epochs)},
        validation_metrics={
            key: _finite_or_none(value) for key, value in binary_metrics(is_positive, prob, threshold).items()
        }
        | {"n": len(prob)},
        environment=_environment(),
        covidct_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _data_facts(manifest: Manifest, facts: RunFacts) -> dict:
    return {
        "origin": str(manifest.origin),
        "manifest_sha256": manifest.sha256(),
        "class_counts": {split: manifest.class_counts(split) for split in SPLITS},
        "split_method": facts.split_method,
        "has_patient_ids": manifest.has_patient_ids,
        "unusable_files": [{"path": f.path, "reason": f.reason} for f in facts.failures],
        "audit_warnings": facts.audit_warnings,
    }


def _run_facts(facts: RunFacts, epochs_budget: int) -> dict:
    progress = facts.progress
    return {
        "epochs_run": progress.next_epoch,
        "best_epoch": progress.best_epoch,
        "best_val_auc": progress.best_auc,
        "stopped_early": progress.next_epoch < epochs_budget,
        "device": str(facts.device),
        "bf16_autocast": facts.use_bf16,
        "wall_time_s": round(facts.wall_time_s, 1),
    }


def _environment() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        **{name: version(name) for name in ("torch", "torchvision", "numpy", "scikit-learn", "safetensors")},
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
