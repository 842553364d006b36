"""Training under ``torchrun``: the process group, which rank does what, and the
collectives the trainer needs.

``covidct train`` runs unchanged under torchrun: when torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK) is present, ``distributed_session`` joins the process group (nccl on GPUs, one GPU per
local rank; gloo on CPUs) and yields a ``World``; otherwise it yields the single-process world, whose
methods all do nothing, so single-process runs take exactly the code path they always did.

Decisions, written down once:

- ``--batch-size`` is per process, as in DistributedDataParallel: the global batch is
  ``batch_size x world_size``. covidct does not rescale ``--lr``; with N processes, either pass
  ``--batch-size B/N`` to keep the single-GPU recipe, or scale ``--lr`` by about N with a warm-up
  (``--warmup-epochs 1``: the linear scaling rule, Goyal et al. 2017, arXiv:1706.02677).
- No SyncBatchNorm: each process normalises over its own batch, as the single-device recipe does over
  its 10 slices; SyncBatchNorm would add an all-reduce to each of ResNet-50's 53 BatchNorm layers in
  every forward pass, and it does not run on CPUs (gloo). Frozen BatchNorms keep ImageNet's statistics.
- Validation is sharded: rank r evaluates slices r, r + N, ... and the logits are all-gathered in
  the original order, so every rank computes the same ROC-AUC in 1/N of the time. The evaluated
  network's BatchNorm buffers are first copied from rank 0, so what is validated is what rank 0 saves.
- Every decision that reads a clock or a metric (early stopping, the ``--max-minutes`` plan, "is
  this the best epoch") is taken on rank 0's epoch record, broadcast to all ranks, so no rank stops
  while another waits for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from covidct.errors import OptionError
from covidct.model.device import Device, resolve_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; ``World(device)`` is a single-process run."""

    device: torch.device
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the one process that prints, logs and writes files (rank 0)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    @property
    def backend(self) -> str | None:
        """The process group's backend (nccl on GPUs, gloo on CPUs), or None outside torchrun."""
        return dist.get_backend() if dist.is_initialized() else None

    def require_rows(self, rows: int, split: str) -> None:
        """Check that every rank gets at least one slice of ``split``.

        Raises:
            OptionError: the split has fewer usable slices than there are processes.
        """
        if rows < self.size:
            raise OptionError(
                f"the {split} split has {rows} usable slice(s), fewer than the {self.size} "
                f"torchrun processes; start at most {rows} (--nproc-per-node x --nnodes)"
            )

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of ``tensor``: rows rank, rank + size, ... (all of them in a single process)."""
        return tensor[self.rank :: self.size]

    def gather(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Reassemble the (total, ...) tensor whose ``shard`` each rank computed as ``local``.

        Shards differ in length by at most one row, so each is padded to the longest for all_gather.
        """
        if not self.is_distributed:
            return local
        longest = -(-total // self.size)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: len(local)] = local
        # Sent as raw bytes: gloo does not reduce or gather every dtype (bfloat16 among them).
        wire = padded.view(torch.uint8)
        parts = [torch.empty_like(wire) for _ in range(self.size)]
        dist.all_gather(parts, wire.to(self._wire_device))
        result = local.new_empty((total, *local.shape[1:]))
        for rank, part in enumerate(parts):
            result[rank :: self.size] = part.cpu().view(local.dtype)[: len(range(rank, total, self.size))]
        return result

    def broadcast(self, value: object) -> object:
        """Rank 0's ``value`` on every rank (any picklable object; the value itself in a single process)."""
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self._wire_device)
        return box[0]

    def gathered_validation(
        self, local_logits: Callable[[nn.Module], torch.Tensor], total: int
    ) -> Callable[[nn.Module], torch.Tensor]:
        """Turn "logits of this rank's validation shard" into "logits of the whole split",
        the same on every rank."""
        if not self.is_distributed:
            return local_logits

        def logits(net: nn.Module) -> torch.Tensor:
            for buffer in net.buffers():
                dist.broadcast(buffer.data, src=0)
            return self.gather(local_logits(net), total)

        return logits

    def seed_augmentation(self, seed: int) -> None:
        """Give each rank its own stream of random augmentations (a single process
        keeps its stream as it is)."""
        if self.is_distributed:
            torch.manual_seed(seed + self.rank)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel (gradients averaged across ranks), or as it is."""
        if not self.is_distributed:
            return module
        return DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def sampler(self, dataset: Dataset, *, seed: int) -> DistributedSampler | None:
        """A sampler giving each rank its own share of ``dataset``, reshuffled by ``set_epoch``;
        None in a single process."""
        if not self.is_distributed:
            return None
        return DistributedSampler(dataset, num_replicas=self.size, rank=self.rank, shuffle=True, seed=seed)

    @property
    def _wire_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


def is_main_process() -> bool:
    """True unless torchrun started this process as a rank other than 0 (the CLI keeps the others quiet)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def distributed_session(device: Device | str) -> Iterator[World]:
    """Yield this process's ``World``; under torchrun, join the process group first and leave it at the end.

    A process group that the caller already initialised is used as it is and left for the caller to destroy.

    Raises:
        OptionError: ``--device`` asks for CUDA but this node has fewer GPUs than torchrun processes.
    """
    resolved = resolve_device(device)
    if not dist.is_initialized() and not all(name in os.environ for name in TORCHRUN_VARIABLES):
        yield World(resolved)
        return
    if resolved.type == "cuda":
        resolved = _local_gpu(int(os.environ.get("LOCAL_RANK", "0")))
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(
            "nccl" if resolved.type == "cuda" else "gloo",
            device_id=resolved if resolved.type == "cuda" else None,
        )
    try:
        yield World(resolved, dist.get_rank(), dist.get_world_size())
    finally:
        if owns_group:
            dist.destroy_process_group()


def _local_gpu(local_rank: int) -> torch.device:
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise OptionError(
            f"torchrun started local rank {local_rank}, but this node "
            f"has {count} GPU(s); use --nproc-per-node {count} or fewer"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)
