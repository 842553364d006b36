"""Fit a model directory from a manifest: data, network, epochs with early stopping, calibration, save."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from covidct.data.audit import audit_manifest
from covidct.data.dataset import decode_slices
from covidct.data.manifest import Manifest
from covidct.data.splits import assign_splits, split_method
from covidct.errors import CovidctWarning, InputError, OptionError
from covidct.evaluate.site_shift import reference_statistics
from covidct.infer.torch_engine import TorchEngine
from covidct.io.failures import InputFailure
from covidct.model.backbone import read_backbone, refuse_seen_test_files
from covidct.model.card import ModelCard
from covidct.model.checkpoint import save_model_dir
from covidct.model.device import supports_bf16
from covidct.model.network import build_resnet50, load_backbone_state, set_trainable
from covidct.model.ood import save_detector
from covidct.model.pretrained import Backbone, Pretrained
from covidct.preprocess.transforms import Preprocessing
from covidct.run_dir import claim_run_dir
from covidct.train.callbacks import TrainCallbacks
from covidct.train.config import Mode, TrainConfig
from covidct.train.distributed import World, distributed_session, is_main_process
from covidct.train.epochs import EpochRunner, make_runner
from covidct.train.finalize import RunFacts, build_card
from covidct.train.ood_fit import fit_ood_guard
from covidct.train.resume import (
    Progress,
    interrupted,
    load_best_weights,
    load_resume_state,
    remove_resume_state,
    save_resume_state,
    seed_everything,
)


@dataclass(frozen=True)
class SplitData:
    """Decoded slices, class indices, sources and patient ids (None where unknown) of one split, with the
    files that failed to decode."""

    slices: torch.Tensor
    labels: torch.Tensor
    failures: list[InputFailure]
    sources: list[str | None]
    groups: list[str | None]


@dataclass(frozen=True)
class TrainResult:
    """What ``fit`` produced: the model directory, its card and the files that could not be used."""

    model_dir: Path
    card: ModelCard
    failures: list[InputFailure]


def fit(
    manifest: Manifest,
    out_dir: Path,
    config: TrainConfig,
    *,
    pretrained: Pretrained | None = None,
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
    overwrite: bool = False,
) -> TrainResult | None:
    """Train on ``manifest``'s train split, select and calibrate on val, fit the OOD guard, write ``out_dir``.

    The network starts from ``pretrained`` (ImageNet weights, see ``resolve_pretrained``), or, when
    ``config.backbone`` names a ``covidct pretrain`` folder, from that backbone, and then ``pretrained``
    is not used (a script can keep passing its ImageNet weights to every recipe).

    Under torchrun every process trains its share (see ``covidct.train.distributed``); rank 0 alone
    reports through ``callbacks`` and writes ``out_dir``, and the other ranks return None. ``out_dir`` must be
    new, empty or a covidct training run, unless ``overwrite`` (see ``covidct.run_dir``).

    Raises:
        InputError: a split has no usable images of a class; a test file is among the backbone's
            pre-training inputs.
        ModelDirError: ``config.backbone`` is not a complete, untampered ``covidct pretrain`` folder.
        TrainingInterrupted: Ctrl-C; ``out_dir/resume`` holds the state for ``--resume``.
        OptionError: torchrun started more processes on a node than it has GPUs;
            ``out_dir`` holds other files; neither ``pretrained`` nor ``config.backbone`` is given.
    """
    if config.backbone is not None:
        pretrained = read_backbone(Path(config.backbone))
    elif pretrained is None:
        raise OptionError("fit needs start weights: pass pretrained or set config.backbone")
    if not resume and is_main_process():
        claim_run_dir(Path(out_dir), "train", overwrite=overwrite)
    with distributed_session(config.device) as world:
        quiet = TrainCallbacks()
        return _fit(
            manifest,
            Path(out_dir),
            config,
            pretrained=pretrained,
            resume=resume,
            callbacks=(callbacks or quiet) if world.is_main else quiet,
            world=world,
        )


def _fit(
    manifest: Manifest,
    out_dir: Path,
    config: TrainConfig,
    *,
    pretrained: Pretrained,
    resume: bool,
    callbacks: TrainCallbacks,
    world: World,
) -> TrainResult | None:
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seed_everything(config.seed)
    method = split_method(manifest)
    manifest = assign_splits(
        manifest, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed
    )
    if pretrained.backbone is not None:
        _check_backbone(pretrained.backbone, manifest, config)
    if world.is_main:  # the audit decodes every image; the other ranks would only repeat it
        audit = audit_manifest(manifest, progress=callbacks.decode_progress("auditing the data"))
        callbacks.on_audit(audit)
    preprocessing = config.preprocessing
    train, val = (_decode_split(manifest, split, preprocessing, callbacks) for split in ("train", "val"))
    world.require_rows(len(train.labels), "train")
    world.require_rows(len(val.labels), "val")
    device = world.device
    use_bf16 = supports_bf16(device)
    model = _build_model(manifest, config, pretrained)
    world.seed_augmentation(config.seed)
    runner = make_runner(
        model,
        config,
        train=(train.slices, train.labels),
        val=(val.slices, val.labels),
        train_sources=train.sources,
        positive_index=manifest.positive_index,
        preprocessing=preprocessing,
        device=device,
        use_bf16=use_bf16,
        callbacks=callbacks,
        world=world,
    )
    progress = _run_epochs(runner, out_dir, config, resume=resume, callbacks=callbacks, world=world)
    if not world.is_main:
        return None
    model.load_state_dict(load_best_weights(out_dir))
    failures = train.failures + val.failures
    facts = RunFacts(
        device,
        use_bf16,
        progress,
        failures,
        method,
        time.perf_counter() - started,
        [f.message for f in audit.warnings],
    )
    callbacks.on_stage("calibrating on the validation split")
    # The trained network scored as prediction scores it; one validation pass serves calibration (logits)
    # and the OOD threshold (features).
    engine = TorchEngine(model.eval(), device=device, use_bf16=use_bf16)
    scoring = {"preprocessing": preprocessing, "batch_size": 32, "tta_hflip": config.tta_hflip}
    val_features, val_logits = engine.features_and_logits(val.slices, **scoring)
    val_scored = (torch.from_numpy(val_logits), val.labels, val.groups)
    card = build_card(
        manifest, config, val=val_scored, preprocessing=preprocessing, pretrained=pretrained, facts=facts
    )
    card = dataclasses.replace(
        card,
        training={
            **card.training,
            "processes": world.size,
            "process_group": world.backend,
            "global_batch_size": config.batch_size * world.size,
        },
    )
    callbacks.on_stage("fitting the out-of-distribution guard on the training slices")
    ood = fit_ood_guard(
        engine,
        train=(train.slices, train.labels),
        val_features=val_features,
        val_groups=val.groups,
        preprocessing=preprocessing,
        tta_hflip=config.tta_hflip,
    )
    card = dataclasses.replace(card, ood=save_detector(out_dir, ood.detector, **ood.facts))
    # What evaluation compares a test set with to flag a likely site shift (covidct.evaluate.site_shift).
    card = dataclasses.replace(
        card, data={**card.data, "site_statistics": reference_statistics(train.slices, ood.val_scores)}
    )
    card = save_model_dir(out_dir, model, card)
    _write_log(out_dir / "train_log.csv", progress.history)
    remove_resume_state(out_dir)
    return TrainResult(out_dir, card, failures)


def _check_backbone(backbone: Backbone, manifest: Manifest, config: TrainConfig) -> None:
    """Refuse a test split the backbone pre-trained on; warn when it learned on other slices than these."""
    here = json.loads(json.dumps(config.preprocessing.to_dict()))  # as backbone.json holds it: lists
    differing = {
        key: (backbone.preprocessing.get(key), value)
        for key, value in here.items()
        if backbone.preprocessing.get(key) != value
    }
    if differing:
        warnings.warn(
            "--backbone was pre-trained on slices prepared otherwise (option: (pre-training, here) "
            f"{differing}); it learned slices unlike the ones it now fine-tunes on",
            CovidctWarning,
            stacklevel=4,
        )
    test_paths = [sample.path for sample in manifest.select("test").samples]
    refuse_seen_test_files(test_paths, backbone, origin=manifest.origin)


def _decode_split(
    manifest: Manifest, split: str, preprocessing: Preprocessing, callbacks: TrainCallbacks
) -> SplitData:
    part = manifest.select(split)
    decoded = decode_slices(
        [s.path for s in part.samples], preprocessing, progress=callbacks.decode_progress(f"decoding {split}")
    )
    labels = torch.tensor([part.samples[i].label for i in decoded.indices], dtype=torch.long)
    missing = [manifest.classes[c] for c in range(len(manifest.classes)) if not (labels == c).any()]
    if missing:
        raise InputError(
            f"the {split} split has no usable images of class "
            f"{missing} ({len(decoded.failures)} failed to decode)",
            path=manifest.origin,
        )
    samples = [part.samples[i] for i in decoded.indices]
    slices = torch.from_numpy(decoded.images)
    sources, groups = [s.source for s in samples], [s.group for s in samples]
    return SplitData(slices, labels, decoded.failures, sources, groups)


def _build_model(manifest: Manifest, config: TrainConfig, pretrained: Pretrained) -> nn.Module:
    model = build_resnet50(num_classes=len(manifest.classes), stride_variant=pretrained.stride_variant)
    load_backbone_state(model, pretrained.state)
    set_trainable(model, "head" if config.mode is Mode.LINEAR else config.train_layers)
    return model


def _run_epochs(
    runner: EpochRunner,
    out_dir: Path,
    config: TrainConfig,
    *,
    resume: bool,
    callbacks: TrainCallbacks,
    world: World,
) -> Progress:
    """Run epochs until the plan or early stopping; save resumable state after each one (rank 0).

    Every rank follows rank 0's epoch record, so the ranks agree on the best epoch, the time plan and
    when to stop, and none waits forever in a collective that another has left.
    """
    state_args = {
        "modules": runner.stateful,
        "optimizer": runner.optimizer,
        "scheduler": runner.scheduler,
        "config": config.to_dict(),
    }
    progress = load_resume_state(out_dir, **state_args) if resume else Progress()
    try:
        while (
            progress.next_epoch < (progress.planned_epochs or config.resolved_epochs)
            and progress.epochs_without_improvement < config.patience
        ):
            epoch = progress.next_epoch
            record = world.broadcast(runner.run_epoch(epoch))
            is_best = record["val_auc"] > progress.best_auc
            if is_best:
                progress.best_auc, progress.best_epoch, progress.epochs_without_improvement = (
                    record["val_auc"],
                    epoch,
                    0,
                )
            else:
                progress.epochs_without_improvement += 1
            progress.history.append(record)
            progress.next_epoch = epoch + 1
            if config.max_minutes is not None:
                progress.planned_epochs = progress.epochs_within_budget(
                    max_minutes=config.max_minutes, max_epochs=config.resolved_epochs
                )
                runner.plan_epochs(progress.planned_epochs)
            if world.is_main:
                save_resume_state(
                    out_dir, best=runner.evaluated, progress=progress, is_best=is_best, **state_args
                )
            callbacks.on_epoch_end(record, progress.planned_epochs or config.resolved_epochs)
    except KeyboardInterrupt:
        raise interrupted(progress, out_dir) from None
    return progress


def _write_log(path: Path, history: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
