"""Partial fine-tuning with the frozen layers run once: their outputs for a fixed set of augmented views.

With ``--train-layers layer4`` the stem and layers 1-3 (about 80% of ResNet-50's forward FLOPs) never
change, yet the plain recipe runs them on every slice in every epoch, because pixel augmentation
makes their output differ each time. ``--frozen-views K`` draws K augmented views of every training
slice once, from the very augmentation the plain recipe uses, runs them through the frozen layers and
keeps the outputs; epoch e then shows view (e + offset_i) mod K of slice i (offset_i fixed at random),
so every K consecutive epochs see K different augmentations of each slice, as the plain recipe would.
What changes is only that after K epochs the views repeat: the augmentation is a fixed sample of K
draws per slice instead of a fresh draw each epoch. That is why it is an option (default off), and
why the card records ``frozen_views``. Validation has no augmentation, so its frozen outputs are
computed once and are exact. Feature-space augmentation was rejected: a flip or crop of layer-3
feature maps is not the features of a flipped or cropped slice, so it would change the recipe silently.

Cost: K trunk passes per slice up front instead of one per epoch; memory: K x (1024 x S/16 x S/16)
values per slice for layer4 (bf16 where autocast runs, about 0.4 MB at 224 px), checked before caching.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from covidct.errors import OptionError
from covidct.model.device import autocast
from covidct.model.forward import predict_logits
from covidct.model.network import STAGES, TrainLayers, pooled, run_stages, stem
from covidct.preprocess.transforms import Preprocessing
from covidct.train.distributed import World

FIRST_TRAINED_STAGE = {TrainLayers.LAYER4: "layer4", TrainLayers.LAYER3: "layer3"}
MEMORY_SHARE = 0.5


def run_trunk(model: nn.Module, images: torch.Tensor, train_layers: TrainLayers) -> torch.Tensor:
    """Return the (N, C, h, w) output of the frozen layers (stem and the stages before ``train_layers``)
    for (N, 3, S, S) images."""
    return run_stages(model, stem(model, images), STAGES[: _first_trained(train_layers)])


def run_tail(model: nn.Module, trunk_output: torch.Tensor, train_layers: TrainLayers) -> torch.Tensor:
    """Return the (N, classes) logits of the trained stages and head for what ``run_trunk`` returned."""
    return model.fc(pooled(model, run_stages(model, trunk_output, STAGES[_first_trained(train_layers) :])))


def _first_trained(train_layers: TrainLayers) -> int:
    return STAGES.index(FIRST_TRAINED_STAGE[train_layers])


class TrainableTail(nn.Module):
    """The part of ``model`` that trains, as a module (what DistributedDataParallel
    wraps and the optimizer sees).

    It holds the whole ``model`` so parameter order and names stay the model's; the frozen parameters
    do not require gradients and are never called.
    """

    def __init__(self, model: nn.Module, train_layers: TrainLayers) -> None:
        super().__init__()
        self.model = model
        self.train_layers = TrainLayers(train_layers)

    def forward(self, trunk_output: torch.Tensor) -> torch.Tensor:
        return run_tail(self.model, trunk_output, self.train_layers)


class CachedViews(Dataset):
    """Cached trunk outputs (views, N, C, h, w) with (N,) labels and loss weights; ``set_epoch(e)`` shows view
    (e + offset_i) mod views of slice i."""

    def __init__(
        self, views: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, *, seed: int
    ) -> None:
        self.views = views
        self.labels = labels
        self.weights = weights
        self.offsets = torch.randint(
            len(views), (len(labels),), generator=torch.Generator().manual_seed(seed)
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        view = (self.epoch + int(self.offsets[index])) % len(self.views)
        return self.views[view, index], self.labels[index], self.weights[index]


def cache_frozen_views(
    model: nn.Module,
    slices: torch.Tensor,
    *,
    views: int,
    train_layers: TrainLayers,
    preprocessing: Preprocessing,
    device: torch.device,
    use_bf16: bool,
    augment: nn.Module,
    batch_size: int,
    world: World,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Return (views, N, C, h, w): ``views`` draws of ``augment`` (the run's training augmentation) on each
    (N, S, S) slice through the frozen layers, run once.

    Each rank computes its shard of the slices; the outputs are gathered so every rank holds them all.

    Raises:
        OptionError: the cache would take more than half of this machine's memory.
    """
    _check_memory(
        model, slices, views=views, train_layers=train_layers, preprocessing=preprocessing, use_bf16=use_bf16
    )
    model.eval()
    local_slices = world.shard(slices)
    cached = []
    for view in range(views):
        local = []
        for start in range(0, len(local_slices), batch_size):
            # Augmented as SliceDataset does for the plain recipe: float (1, S, S) in, clamped to [0, 1].
            batch = torch.cat(
                [
                    augment(image.unsqueeze(0).float()).clamp(0.0, 1.0)
                    for image in local_slices[start : start + batch_size]
                ]
            )
            local.append(
                trunk_outputs(
                    model,
                    batch,
                    train_layers=train_layers,
                    preprocessing=preprocessing,
                    device=device,
                    use_bf16=use_bf16,
                )
            )
        cached.append(world.gather(torch.cat(local), len(slices)))
        if progress:
            progress(view + 1, views)
    return torch.stack(cached)


def trunk_outputs(
    model: nn.Module,
    slices: torch.Tensor,
    *,
    train_layers: TrainLayers,
    preprocessing: Preprocessing,
    device: torch.device,
    use_bf16: bool,
) -> torch.Tensor:
    """(N, C, h, w) frozen-layer outputs of (N, S, S) slices in [0, 1], kept on the CPU in bf16
    under autocast, else float32.

    bf16 loses nothing under autocast: the trained stages only read their input through
    convolutions, which cast it to bf16.
    """
    outputs = predict_logits(
        lambda x: run_trunk(model, x, train_layers),
        slices,
        preprocessing=preprocessing,
        device=device,
        use_bf16=use_bf16,
    )
    return outputs.to(torch.bfloat16 if use_bf16 else torch.float32)


@torch.inference_mode()
def tail_logits(
    net: nn.Module,
    cached: torch.Tensor,
    *,
    train_layers: TrainLayers,
    device: torch.device,
    use_bf16: bool,
    batch_size: int,
) -> torch.Tensor:
    """Float32 (N, classes) logits of ``net``'s trained stages and head for cached trunk outputs."""
    outputs = []
    for start in range(0, len(cached), batch_size):
        inputs = cached[start : start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, use_bf16):
            outputs.append(run_tail(net, inputs, train_layers).float().cpu())
    return torch.cat(outputs)


def _check_memory(
    model: nn.Module,
    slices: torch.Tensor,
    *,
    views: int,
    train_layers: TrainLayers,
    preprocessing: Preprocessing,
    use_bf16: bool,
) -> None:
    size = preprocessing.image_size
    with torch.inference_mode():
        probe = run_trunk(
            model.eval(), torch.zeros(1, 3, size, size, device=next(model.parameters()).device), train_layers
        )
    needed = views * len(slices) * probe.numel() * (2 if use_bf16 else 4)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > MEMORY_SHARE * available:
        raise OptionError(
            f"--frozen-views {views} would cache {needed / 2**30:.1f} GiB "
            f"of frozen-layer outputs for {len(slices)} training slices "
            f"at {size} px, more than half of this machine's "
            f"{available / 2**30:.1f} GiB; lower --frozen-views or leave it at 0"
        )
