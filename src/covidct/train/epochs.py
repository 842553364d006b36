"""One training epoch and one validation pass, for both modes (finetune on slices,
linear on cached features)."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from covidct.data.slice_dataset import SliceDataset
from covidct.infer.torch_engine import TorchEngine
from covidct.model.device import autocast
from covidct.model.network import BLOCK_NAMES, STAGES, train_mode
from covidct.preprocess.augment import train_augmentation
from covidct.preprocess.transforms import Preprocessing, normalize
from covidct.train.callbacks import TrainCallbacks
from covidct.train.config import Augmentation, Mode, TrainConfig
from covidct.train.distributed import World
from covidct.train.frozen_cache import (
    CachedViews,
    TrainableTail,
    cache_frozen_views,
    tail_logits,
    trunk_outputs,
)
from covidct.train.loss import batch_loss, draw_mix

Tensors = tuple[torch.Tensor, torch.Tensor]


@dataclass
class EpochRunner:
    """Holds what an epoch needs; ``module`` is the part that trains (the whole network, or only its head)."""

    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    to_input: Callable[[torch.Tensor], torch.Tensor]
    val_logits: Callable[[nn.Module], torch.Tensor]
    val_labels: torch.Tensor
    loss_fn: nn.Module
    device: torch.device
    use_bf16: bool
    callbacks: TrainCallbacks
    seed: int
    positive_index: int
    averaged: AveragedModel | None = None
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0

    @property
    def evaluated(self) -> nn.Module:
        """The network that is validated and kept as "best": the weight average when there is one."""
        return self.averaged.module if self.averaged is not None else self.model

    @property
    def stateful(self) -> dict[str, nn.Module]:
        """Everything whose state a resumed run needs, by name."""
        return {"model": self.model} | ({"ema": self.averaged} if self.averaged is not None else {})

    def plan_epochs(self, epochs: int) -> None:
        """Shorten (or restore) the schedule so the learning rate reaches zero at the end of ``epochs``."""
        for schedule in self.scheduler.lr_lambdas:
            schedule.plan(epochs)

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch, then validate; return the log row (loss, validation loss and
        ROC-AUC, lr, seconds)."""
        started = time.perf_counter()
        self.loader.generator.manual_seed(self.seed * 1000 + epoch)
        for part in (
            self.loader.sampler,
            self.loader.dataset,
        ):  # a DistributedSampler reshuffles; cached frozen views move on
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        self.module.train()
        train_mode(
            self.model
        )  # after module.train(): frozen blocks go back to eval, their BatchNorms keep ImageNet's statistics
        losses = []
        mix_rng = np.random.default_rng(self.seed * 1000 + epoch)  # a resumed epoch blends as before
        for step, (inputs, labels, weights) in enumerate(self.loader):
            inputs, labels, weights = (
                self.to_input(inputs.to(self.device)),
                labels.to(self.device),
                weights.to(self.device),
            )
            mix = draw_mix(len(labels), self.mixup_alpha, mix_rng)
            if mix is not None:
                inputs = mix.blend(inputs)
            with autocast(self.device, self.use_bf16):
                logits = self.module(inputs).float()
            loss = batch_loss(logits, labels, weights, mix=mix, label_smoothing=self.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            losses.append(float(loss.detach()))
            self.callbacks.on_step(step + 1, len(self.loader), losses[-1])
        self.module.eval()
        self.evaluated.eval()
        logits = self.val_logits(self.evaluated)
        val_loss = float(self.loss_fn(logits.to(self.device), self.val_labels.to(self.device)))
        positive_prob = torch.softmax(logits, 1)[:, self.positive_index].numpy()
        is_positive = (self.val_labels == self.positive_index).numpy()
        return {
            "epoch": epoch,
            "train_loss": round(float(np.mean(losses)), 5),
            "val_loss": round(val_loss, 5),
            "val_auc": round(float(roc_auc_score(is_positive, positive_prob)), 5),
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - started, 2),
        }


def make_runner(
    model: nn.Module,
    config: TrainConfig,
    *,
    train: Tensors,
    val: Tensors,
    train_sources: Sequence[str | None],
    positive_index: int,
    preprocessing: Preprocessing,
    device: torch.device,
    use_bf16: bool,
    callbacks: TrainCallbacks,
    world: World | None = None,
) -> EpochRunner:
    """Build the runner for ``config.mode``; linear mode and ``--frozen-views`` run the
    frozen layers here, once.

    ``train_sources`` names the site or dataset of each training slice (None where unknown); the
    training loss weights each (source, class) cell equally (see ``cell_weights``). Under torchrun
    (``world``) the training module is wrapped in DistributedDataParallel, each rank draws its share of
    the training data, and each validates its shard of the validation split (see
    ``covidct.train.distributed``).
    """
    model.to(device=device, memory_format=torch.channels_last)
    world = world or World(device)
    weights = cell_weights(train[1], train_sources)
    generator = torch.Generator().manual_seed(config.seed)
    val_shard = world.shard(val[0])
    if config.mode is Mode.LINEAR:
        train_features = world.gather(
            _features(model, world.shard(train[0]), preprocessing, device, use_bf16), len(train[0])
        )
        val_features = _features(model, val_shard, preprocessing, device, use_bf16)
        module = model.fc
        dataset = TensorDataset(train_features, train[1], weights)
        to_input = _identity
        val_logits = lambda net: _head_logits(net.fc, val_features, device)
    elif config.frozen_views:
        callbacks.on_stage(
            f"running the frozen layers once on {config.frozen_views} "
            "augmented views of each training slice (--frozen-views)"
        )
        frozen = {"device": device, "use_bf16": use_bf16, "train_layers": config.train_layers}
        views = cache_frozen_views(
            model,
            train[0],
            views=config.frozen_views,
            preprocessing=preprocessing,
            augment=_augmentation(config, preprocessing),
            batch_size=config.batch_size,
            world=world,
            progress=callbacks.decode_progress("frozen layers"),
            **frozen,
        )
        val_cached = trunk_outputs(model, val_shard, preprocessing=preprocessing, **frozen)
        module = TrainableTail(model, config.train_layers)
        dataset = CachedViews(views, train[1], weights, seed=config.seed)
        to_input = lambda cached: cached.contiguous(memory_format=torch.channels_last)
        val_logits = lambda net: tail_logits(net, val_cached, batch_size=config.batch_size, **frozen)
    else:
        module = model
        dataset = SliceDataset(
            train[0],
            train[1],
            weights,
            augment=_augmentation(config, preprocessing),
        )
        to_input = lambda gray: normalize(gray, preprocessing).contiguous(memory_format=torch.channels_last)
        val_logits = lambda net: _engine_outputs(
            net, val_shard, preprocessing, device, use_bf16, config.batch_size
        )[1]
    is_finetune = config.mode is Mode.FINETUNE
    drop_last = len(dataset) > config.batch_size and is_finetune
    sampler = world.sampler(dataset, seed=config.seed)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        generator=generator,
    )
    optimizer = build_optimizer(model, module, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        WarmupCosine(
            steps_per_epoch=len(loader), epochs=config.resolved_epochs, warmup_epochs=config.warmup_epochs
        ),
    )
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(train[1], model.fc.out_features).to(device))
    averaged = _weight_average(model, config, steps_per_epoch=len(loader)) if is_finetune else None
    val_logits = world.gathered_validation(val_logits, len(val[1]))
    return EpochRunner(
        model,
        world.wrap(module),
        optimizer,
        scheduler,
        loader,
        to_input,
        val_logits,
        val[1],
        loss_fn,
        device,
        use_bf16,
        callbacks,
        config.seed,
        positive_index,
        averaged,
        label_smoothing=config.label_smoothing,
        mixup_alpha=config.mixup_alpha,
    )


def _augmentation(config: TrainConfig, preprocessing: Preprocessing) -> nn.Module:
    """The training augmentation ``config`` asks for (``--augmentation``, ``--vary-export``,
    ``--narrow-windows``)."""
    light = config.augmentation is Augmentation.LIGHT
    return train_augmentation(
        preprocessing.image_size,
        light=light,
        vary_export=config.vary_export,
        narrow_windows=config.narrow_windows,
    )


def _weight_average(model: nn.Module, config: TrainConfig, *, steps_per_epoch: int) -> AveragedModel | None:
    """An exponential moving average of the weights (and BatchNorm statistics) over ~``ema_epochs`` epochs.

    On small, noisy CT datasets the validation AUC of single checkpoints jumps from epoch to epoch; the
    average is a cheap ensemble of the recent checkpoints and is what gets validated and kept.
    """
    if config.ema_epochs is None:
        return None
    decay = 1.0 - 1.0 / max(1.0, config.ema_epochs * steps_per_epoch)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _features(
    model: nn.Module, slices: torch.Tensor, preprocessing: Preprocessing, device: torch.device, use_bf16: bool
) -> torch.Tensor:
    model.eval()
    return _engine_outputs(model, slices, preprocessing, device, use_bf16)[0]


def _engine_outputs(
    model: nn.Module,
    slices: torch.Tensor,
    preprocessing: Preprocessing,
    device: torch.device,
    use_bf16: bool,
    batch_size: int = 32,
) -> Tensors:
    """(N, 2048) features and (N, C) logits of ``model`` as the torch engine predicts them (no flips)."""
    engine = TorchEngine(model, device=device, use_bf16=use_bf16)
    options = {"preprocessing": preprocessing, "batch_size": batch_size, "tta_hflip": False}
    features, logits = engine.features_and_logits(slices, **options)
    return torch.from_numpy(features), torch.from_numpy(logits)


@torch.inference_mode()
def _head_logits(head: nn.Module, features: torch.Tensor, device: torch.device) -> torch.Tensor:
    return head(features.to(device)).float().cpu()


def build_optimizer(model: nn.Module, module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; the pretrained backbone learns at ``backbone_lr_factor`` times the new head's rate, each block
    below layer4 at ``layer_lr_decay`` times the rate of the block above it (a parameter group per block)."""
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    groups = [{"params": list(model.fc.parameters()), "lr": config.lr}]
    for block in BLOCK_NAMES:  # the stem (conv1, bn1) sits one step below layer1
        depth = len(STAGES) - 1 - STAGES.index(block) if block in STAGES else len(STAGES)
        params = [p for p in getattr(model, block).parameters() if id(p) in trainable]
        if params:
            lr = config.lr * config.backbone_lr_factor * config.layer_lr_decay**depth
            groups.append({"params": params, "lr": lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


class WarmupCosine:
    """LR factor: linear warm-up for ``warmup_epochs``, then cosine decay to zero at the last planned epoch.

    A callable object rather than a closure, so LambdaLR saves ``total_steps`` with the scheduler state
    and a resumed run keeps the horizon that ``--max-minutes`` may have shortened.
    """

    def __init__(self, *, steps_per_epoch: int, epochs: int, warmup_epochs: float) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = round(steps_per_epoch * warmup_epochs)
        self.total_steps = max(1, steps_per_epoch * epochs)

    def plan(self, epochs: int) -> None:
        """Move the end of the cosine to the end of epoch ``epochs``."""
        self.total_steps = max(1, self.steps_per_epoch * epochs)

    def __call__(self, step: int) -> float:
        warmup = min(self.total_steps - 1, self.warmup_steps)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, self.total_steps - warmup))))


def _class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (n / (C * n_c)), so the validation loss treats classes
    equally whatever the balance."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)


def cell_weights(labels: torch.Tensor, sources: Sequence[str | None]) -> torch.Tensor:
    """(N,) float32 loss weights n / (K * n_k) over the K (source, class) cells that occur.

    Each cell then carries the same total weight, so a model cannot lower its loss by learning which
    source a slice came from when one source has more COVID slices than another (the shortcut behind
    cross-site failures). Without sources it is the class weighting n / (C * n_c). A loss weighting
    rather than a sampler, so it composes with any sampler (distributed training shards the data).
    """
    cells = list(zip(sources, labels.tolist(), strict=True))
    counts = Counter(cells)
    return torch.tensor([len(cells) / (len(counts) * counts[cell]) for cell in cells], dtype=torch.float32)
