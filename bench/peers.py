"""The UCSD-AI4H COVID-CT baseline's published recipe on covidct's weights, folds and budget (not a test).

The recipe as the baseline's repository trains it (UCSD-AI4H/COVID-CT, ``baseline methods``): Adam at a
constant learning rate of 1e-4, batch 10, unweighted cross-entropy; training images resized so the shorter
side is 256, then RandomResizedCrop(224, scale 0.5-1) and a horizontal flip; test images resized so the
shorter side is 224 and centre-cropped to 224; the epoch with the best validation ROC-AUC is kept and a
slice is called COVID when its softmax probability is at least 0.5 (argmax). Everything else is covidct's,
so the comparison is the recipe alone: the same ImageNet ResNet-50 (``resolve_pretrained``), the same
decoding (``read_grayscale``, gray replicated to 3 channels, ImageNet mean/std), bf16 autocast where
covidct uses it, and the same wall-clock budget (epochs stop when the next would not fit). One deviation:
the last, incomplete batch is dropped (a batch of one cannot train BatchNorm).

``bench/recipes.py`` runs it as the recipe ``peer``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from covidct.evaluate.metrics import binary_metrics
from covidct.io.images import read_grayscale
from covidct.model.device import autocast, supports_bf16
from covidct.model.network import TrainLayers, build_resnet50, load_backbone_state, set_trainable
from covidct.model.pretrained import Pretrained
from covidct.preprocess.transforms import Preprocessing, normalize

PEER_RECIPE = {
    "source": "UCSD-AI4H/COVID-CT baseline methods (DenseNet-169 there; covidct's ResNet-50 here)",
    "optimizer": "Adam, constant lr 1e-4",
    "batch_size": 10,
    "loss": "cross-entropy, unweighted",
    "train_transform": "Resize(256) + RandomResizedCrop(224, scale=(0.5, 1.0)) + RandomHorizontalFlip",
    "test_transform": "Resize(224) + CenterCrop(224)",
    "selection": "epoch with the best validation ROC-AUC",
    "threshold": 0.5,
}
_BATCH, _LR, _SIZE = 10, 1e-4, 224
_NORMALISE = Preprocessing(image_size=_SIZE)  # only its ImageNet mean/std are used


@dataclass(frozen=True)
class PeerRun:
    """A trained peer model as a scorer, and how training went.

    ``score`` maps (H, W) float32 [0, 1] slices to (N,) COVID probabilities.
    """

    score: Callable[[Sequence[np.ndarray]], np.ndarray]
    threshold: float
    epochs_run: int
    best_epoch: int
    val_auc_by_epoch: list[float]


def train_peer(
    train_rows: list[dict],
    val_rows: list[dict],
    *,
    max_minutes: float,
    pretrained: Pretrained,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> PeerRun:
    """Train the peer recipe on ``train_rows`` for ``max_minutes``, choosing the epoch on ``val_rows``."""
    torch.manual_seed(seed)
    device = torch.device("cpu")
    use_bf16 = supports_bf16(device)
    model = build_resnet50(num_classes=2, stride_variant=pretrained.stride_variant)
    load_backbone_state(model, pretrained.state)
    set_trainable(model, TrainLayers.ALL)
    model = model.to(memory_format=torch.channels_last)
    train_images = [_resized(Path(row["path"]), 256) for row in train_rows]
    train_labels = torch.as_tensor([row["label"] == "COVID" for row in train_rows], dtype=torch.long)
    val_grays = [read_grayscale(Path(row["path"])) for row in val_rows]
    val_labels = np.asarray([row["label"] == "COVID" for row in val_rows], dtype=np.int64)
    augment = v2.Compose(
        [v2.RandomResizedCrop(_SIZE, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=_LR)
    loss_fn = nn.CrossEntropyLoss()
    started, aucs, best_state, epoch_seconds = time.perf_counter(), [], None, 0.0
    while time.perf_counter() - started + epoch_seconds <= max_minutes * 60:
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_images))
        for start in range(0, len(order) - _BATCH + 1, _BATCH):
            index = order[start : start + _BATCH]
            batch = torch.stack([augment(train_images[i].float() / 255) for i in index])
            with autocast(device, use_bf16):
                loss = loss_fn(model(_inputs(batch)).float(), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        aucs.append(float(binary_metrics(val_labels, _probabilities(model, val_grays, use_bf16), 0.5)["auc"]))
        if aucs[-1] >= max(aucs):
            best_state = copy.deepcopy(model.state_dict())
        epoch_seconds = time.perf_counter() - epoch_start
        log(f"peer epoch {len(aucs)}: val ROC-AUC {aucs[-1]:.3f} ({epoch_seconds:.0f} s)")
    if best_state is None:
        raise SystemExit(f"peer: --max-minutes {max_minutes} left no time for one epoch")
    model.load_state_dict(best_state)
    return PeerRun(
        lambda grays: _probabilities(model, grays, use_bf16), 0.5, len(aucs), int(np.argmax(aucs)) + 1, aucs
    )


def _resized(path: Path, shorter_side: int) -> torch.Tensor:
    """(1, H', W') uint8 with the shorter side ``shorter_side`` (torchvision Resize with one size)."""
    gray = torch.from_numpy(read_grayscale(path))[None]
    return (
        (v2.functional.resize(gray, [shorter_side], antialias=True).clamp(0, 1) * 255).round().to(torch.uint8)
    )


@torch.inference_mode()
def _probabilities(model: nn.Module, grays: Sequence[np.ndarray], use_bf16: bool) -> np.ndarray:
    """(N,) softmax COVID probabilities with the peer's test transform: Resize(224) + CenterCrop(224)."""
    model.eval()
    outputs = []
    for start in range(0, len(grays), 32):
        crops = [
            v2.functional.center_crop(
                v2.functional.resize(torch.from_numpy(g)[None], [_SIZE], antialias=True), [_SIZE]
            )
            for g in grays[start : start + 32]
        ]
        with autocast(torch.device("cpu"), use_bf16):
            logits = model(_inputs(torch.stack(crops).clamp(0, 1))).float()
        outputs.append(torch.softmax(logits, dim=1)[:, 1])
    return torch.cat(outputs).numpy()


def _inputs(gray: torch.Tensor) -> torch.Tensor:
    return normalize(gray, _NORMALISE).contiguous(memory_format=torch.channels_last)
