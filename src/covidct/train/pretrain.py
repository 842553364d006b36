"""Self-supervised pre-training of the ResNet-50 on CT slices without labels (``covidct pretrain``).

MoCo v2 (``covidct.train.moco``) from covidct's start weights, on slices prepared by the same pipeline as
training (site steps, body crop, HU window), never on a test split. Writes ``backbone.safetensors`` and
``backbone.json`` (``covidct.model.backbone``), which ``covidct train --backbone`` starts from. Resumable
like ``covidct train``: the state after each epoch (both encoders, the queue, optimizer, RNGs) goes to
``resume/`` in safetensors and JSON.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from covidct import __version__
from covidct.data.content_hash import content_sha256
from covidct.data.dataset import decode_slices
from covidct.data.manifest import UnlabelledInputs
from covidct.data.slice_dataset import SliceDataset
from covidct.errors import CovidctWarning, InputError
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.io.failures import InputFailure
from covidct.model.backbone import save_backbone
from covidct.model.device import autocast, resolve_device, supports_bf16
from covidct.model.network import build_resnet50, load_backbone_state
from covidct.model.pretrained import Pretrained
from covidct.preprocess.augment import TwoViews, contrastive_augmentation
from covidct.preprocess.transforms import normalize
from covidct.run_dir import claim_run_dir
from covidct.train.callbacks import TrainCallbacks
from covidct.train.config import PretrainConfig, auto_queue_size
from covidct.train.epochs import WarmupCosine
from covidct.train.moco import PROJECTION_DIM, MoCo
from covidct.train.resume import (
    Progress,
    interrupted,
    load_resume_state,
    remove_resume_state,
    save_resume_state,
    seed_everything,
)

METHOD = "MoCo v2"


@dataclass(frozen=True)
class PretrainResult:
    """What ``pretrain`` produced: the folder, the content of its backbone.json, and the files left out."""

    out_dir: Path
    card: dict
    failures: list[InputFailure]
    excluded_test: int


@dataclass
class _Run:
    """The parts an epoch needs."""

    moco: MoCo
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    use_bf16: bool


def pretrain(
    inputs: UnlabelledInputs,
    out_dir: Path,
    config: PretrainConfig,
    *,
    pretrained: Pretrained,
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
    overwrite: bool = False,
) -> PretrainResult:
    """Pre-train the query encoder on ``inputs`` (test-split rows left out) and write ``out_dir``.

    ``out_dir`` must be new, empty or a covidct pretrain run, unless ``overwrite`` (``covidct.run_dir``).

    Raises:
        InputError: every row is in the test split, or fewer than two slices decode.
        TrainingInterrupted: Ctrl-C; ``out_dir/resume`` holds the state for ``--resume``.
        ModelDirError: ``resume`` without a saved state, or with other options.
        OptionError: ``out_dir`` holds other files.
    """
    started = time.perf_counter()
    callbacks = callbacks or TrainCallbacks()
    out_dir = Path(out_dir)
    paths, excluded_test = inputs.without_test()
    callbacks.on_stage(_exclusion_note(inputs, excluded_test))
    if not paths:
        raise InputError("every row is in the test split: nothing left to pre-train on", path=inputs.origin)
    if not resume:
        claim_run_dir(out_dir, "pretrain", overwrite=overwrite)
    seed_everything(config.seed)
    preprocessing = config.preprocessing
    decoded = decode_slices(paths, preprocessing, progress=callbacks.decode_progress("decoding"))
    if len(decoded.images) < 2:
        raise InputError(
            f"{len(decoded.images)} slice(s) decoded ({len(decoded.failures)} files failed); "
            "pre-training needs at least two",
            path=inputs.origin,
        )
    if config.queue_size is None:
        config = replace(config, queue_size=auto_queue_size(len(decoded.images), config.batch_size))
    elif config.queue_size > len(decoded.images):
        warnings.warn(
            f"queue_size (--queue-size) {config.queue_size} is more than the {len(decoded.images)} slices: "
            "the queue then holds earlier keys of the very slice a query is matched with, as negatives; "
            f"a queue below the slice count (e.g. {max(1, len(decoded.images) // 2)}) avoids that",
            CovidctWarning,
            stacklevel=2,
        )
    used = [paths[index] for index in dict.fromkeys(decoded.indices.tolist())]
    callbacks.on_stage(f"hashing the {len(used)} input files (backbone.json lists them)")
    input_sha256 = {_relative(path, inputs.origin): content_sha256(path) for path in used}
    run = _build_run(torch.from_numpy(decoded.images), config, pretrained)
    progress = _run_epochs(run, out_dir, config, resume=resume, callbacks=callbacks)
    data = {
        "origin": str(inputs.origin),
        "rows": len(inputs.paths),
        "excluded_test_rows": excluded_test,
        "unusable_files": [{"path": f.path, "reason": f.reason} for f in decoded.failures],
    }
    card = _card(config, pretrained, run, progress, time.perf_counter() - started) | {
        "data": data,
        "n_slices": len(decoded.images),
        "input_sha256": input_sha256,
    }
    card = save_backbone(
        out_dir, run.moco.backbone_state(), stride_variant=pretrained.stride_variant, card=card
    )
    remove_resume_state(out_dir)
    return PretrainResult(out_dir, card, decoded.failures, excluded_test)


def _card(
    config: PretrainConfig, pretrained: Pretrained, run: _Run, progress: Progress, seconds: float
) -> dict:
    """backbone.json's description of the method and the run (the data's part is added by the caller)."""
    return {
        "method": METHOD,
        "reference": "He et al. 2020, arXiv:1911.05722; Chen et al. 2020, arXiv:2003.04297",
        "hyperparameters": {
            **config.to_dict(),
            "lr": config.lr,
            "optimizer": "SGD, momentum 0.9, cosine decay per step",
            "projection_head": f"2048 -> 2048 -> {PROJECTION_DIM}, ReLU",
            "augmentation": "random resized crop 0.2-1, h-flip, brightness/contrast 0.4, gamma, blur",
        },
        "preprocessing": config.preprocessing.to_dict(),
        "start_weights": pretrained.provenance,
        "epochs_run": progress.next_epoch,
        "planned_epochs": progress.planned_epochs or config.epochs,
        "history": progress.history,
        "training_seconds": round(sum(record["seconds"] for record in progress.history), 1),
        "wall_time_s": round(seconds, 1),
        "device": str(run.device),
        "bf16_autocast": run.use_bf16,
        "covidct_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "intended_use": RESEARCH_USE_STATEMENT,
    }


def _exclusion_note(inputs: UnlabelledInputs, excluded_test: int) -> str:
    if all(split is None for split in inputs.splits):
        return (
            f"no split column: all {len(inputs.paths)} rows are pre-trained on; 'covidct train --backbone' "
            "refuses a test split with any of these files"
        )
    return f"left out {excluded_test} of {len(inputs.paths)} rows: the test split is never pre-trained on"


def _build_run(slices: torch.Tensor, config: PretrainConfig, pretrained: Pretrained) -> _Run:
    device = resolve_device(config.device)
    encoder = build_resnet50(num_classes=2, stride_variant=pretrained.stride_variant)
    load_backbone_state(encoder, pretrained.state)
    moco = MoCo(
        encoder,
        queue_size=config.queue_size,
        momentum=config.momentum,
        temperature=config.temperature,
        bn_splits=config.bn_splits,
    ).to(device=device, memory_format=torch.channels_last)
    n = len(slices)
    views = TwoViews(contrastive_augmentation(config.image_size))
    dataset = SliceDataset(slices, torch.zeros(n, dtype=torch.long), torch.ones(n), augment=views)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=n > config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = torch.optim.SGD(
        moco.query.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
    )
    schedule = WarmupCosine(steps_per_epoch=len(loader), epochs=config.epochs, warmup_epochs=0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return _Run(moco, loader, optimizer, scheduler, device, supports_bf16(device))


def _run_epochs(
    run: _Run, out_dir: Path, config: PretrainConfig, *, resume: bool, callbacks: TrainCallbacks
) -> Progress:
    """Epochs until the plan (``--epochs``, shortened to fit ``--max-minutes``); state saved after each."""
    state_args = {
        "modules": {"moco": run.moco},
        "optimizer": run.optimizer,
        "scheduler": run.scheduler,
        "config": config.to_dict(),
    }
    progress = load_resume_state(out_dir, **state_args) if resume else Progress()
    try:
        while progress.next_epoch < (progress.planned_epochs or config.epochs):
            record = _run_epoch(run, progress.next_epoch, config, callbacks)
            progress.history.append(record)
            progress.next_epoch += 1
            if config.max_minutes is not None:
                progress.planned_epochs = progress.epochs_within_budget(
                    max_minutes=config.max_minutes, max_epochs=config.epochs
                )
                for schedule in run.scheduler.lr_lambdas:
                    schedule.plan(progress.planned_epochs)
            save_resume_state(out_dir, progress=progress, **state_args)
            callbacks.on_epoch_end(record, progress.planned_epochs or config.epochs)
    except KeyboardInterrupt:
        raise interrupted(progress, out_dir) from None
    return progress


def _run_epoch(run: _Run, epoch: int, config: PretrainConfig, callbacks: TrainCallbacks) -> dict:
    """One pass over the slices; return the log row (epoch, mean loss, last lr, seconds)."""
    started = time.perf_counter()
    run.loader.generator.manual_seed(config.seed * 1000 + epoch)
    run.moco.train()
    preprocessing = config.preprocessing
    losses = []
    for step, (pairs, _, _) in enumerate(run.loader):
        pairs = normalize(pairs.to(run.device).unsqueeze(2), preprocessing)  # (N, 2, 3, S, S)
        queries, keys = (pairs[:, view].contiguous(memory_format=torch.channels_last) for view in (0, 1))
        with autocast(run.device, run.use_bf16):
            loss = run.moco(queries, keys)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        losses.append(float(loss.detach()))
        callbacks.on_step(step + 1, len(run.loader), losses[-1])
    return {
        "epoch": epoch,
        "loss": round(float(np.mean(losses)), 5),
        "lr": run.scheduler.get_last_lr()[0],
        "seconds": round(time.perf_counter() - started, 2),
    }


def _relative(path: Path, origin: Path) -> str:
    """``path`` relative to the data's folder (the CSV's folder), so backbone.json names no absolute path."""
    root = origin if origin.is_dir() else origin.parent
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
