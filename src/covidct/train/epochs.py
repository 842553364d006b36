"""One training epoch and one validation pass, for both modes (finetune on slices, linear on cached features)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from covidct.data.dataset import SliceDataset
from covidct.model.device import autocast
from covidct.model.forward import predict_logits
from covidct.model.network import extract_features, train_mode
from covidct.preprocess.transforms import Preprocessing, normalize, train_augmentation
from covidct.train.callbacks import TrainCallbacks
from covidct.train.config import Mode, TrainConfig

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
        """Train one epoch, then validate; return the log row (loss, validation loss and ROC-AUC, lr, seconds)."""
        started = time.perf_counter()
        self.loader.generator.manual_seed(self.seed * 1000 + epoch)
        if self.module is self.model:
            train_mode(self.model)
        else:
            self.module.train()
        losses = []
        for step, (inputs, labels) in enumerate(self.loader):
            inputs, labels = self.to_input(inputs.to(self.device)), labels.to(self.device)
            with autocast(self.device, self.use_bf16):
                loss = self.loss_fn(self.module(inputs).float(), labels)
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
    positive_index: int,
    preprocessing: Preprocessing,
    device: torch.device,
    use_bf16: bool,
    callbacks: TrainCallbacks,
) -> EpochRunner:
    """Build the runner for ``config.mode``; linear mode computes the frozen features here, once."""
    model.to(device=device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(config.seed)
    if config.mode is Mode.LINEAR:
        features = {name: _features(model, slices, preprocessing, device, use_bf16) for name, (slices, _) in (("train", train), ("val", val))}
        module = model.fc
        dataset = TensorDataset(features["train"], train[1])
        to_input = _identity
        val_logits = lambda net: _head_logits(net.fc, features["val"], device)  # noqa: E731
    else:
        module = model
        dataset = SliceDataset(train[0], train[1], augment=train_augmentation(preprocessing.image_size))
        to_input = lambda gray: normalize(gray, preprocessing).contiguous(memory_format=torch.channels_last)  # noqa: E731
        val_logits = lambda net: predict_logits(net, val[0], preprocessing=preprocessing, device=device, use_bf16=use_bf16, batch_size=config.batch_size)  # noqa: E731
    drop_last = len(dataset) > config.batch_size and module is model
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=drop_last, generator=generator)
    optimizer = _optimizer(model, module, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(steps_per_epoch=len(loader), epochs=config.resolved_epochs, warmup_epochs=config.warmup_epochs))
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(train[1], model.fc.out_features).to(device))
    averaged = _weight_average(model, config, steps_per_epoch=len(loader)) if module is model else None
    return EpochRunner(model, module, optimizer, scheduler, loader, to_input, val_logits, val[1], loss_fn, device, use_bf16, callbacks, config.seed, positive_index, averaged)


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


def _features(model: nn.Module, slices: torch.Tensor, preprocessing: Preprocessing, device: torch.device, use_bf16: bool) -> torch.Tensor:
    model.eval()
    return predict_logits(lambda x: extract_features(model, x), slices, preprocessing=preprocessing, device=device, use_bf16=use_bf16)


@torch.inference_mode()
def _head_logits(head: nn.Module, features: torch.Tensor, device: torch.device) -> torch.Tensor:
    return head(features.to(device)).float().cpu()


def _optimizer(model: nn.Module, module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; the pretrained backbone learns ``backbone_lr_factor`` times slower than the new head."""
    head = list(model.fc.parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in module.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head, "lr": config.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": config.lr * config.backbone_lr_factor})
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
    """Inverse-frequency weights (n / (C * n_c)), so the loss treats classes equally whatever the balance."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)
