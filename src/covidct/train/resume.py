"""Resumable training state on disk: tensors in safetensors, the rest in JSON; no pickles.

Written at the end of every epoch, so Ctrl-C or a crash loses at most the epoch in flight. The tensors go
to files named by epoch and ``state.json``, replaced last and atomically, names the ones that belong to it:
a crash between the writes leaves the previous epoch's state whole, never new weights with old progress.
Only the files a ``state.json`` names are ever deleted: ``resume/`` may hold the user's own files too.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from covidct.errors import ModelDirError, TrainingInterrupted

RESUME_DIR = "resume"


@dataclass
class Progress:
    """Where training stands: the next epoch to run, the best validation AUC so far and the log rows."""

    next_epoch: int = 0
    best_auc: float = float("-inf")
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    planned_epochs: int | None = None
    history: list[dict] = field(default_factory=list)

    def epochs_within_budget(self, *, max_minutes: float, max_epochs: int) -> int:
        """Epochs that fit ``max_minutes`` at the mean epoch time so far (a log row's ``seconds``), at most
        ``max_epochs`` and never fewer than those already run."""
        seconds_per_epoch = sum(record["seconds"] for record in self.history) / len(self.history)
        affordable = int(max_minutes * 60 // seconds_per_epoch)
        return max(self.next_epoch, min(max_epochs, affordable))


def save_resume_state(
    out_dir: Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler,
    progress: Progress,
    config: dict,
    best: torch.nn.Module | None = None,
    is_best: bool = False,
) -> None:
    """Write the modules (by name), optimizer, scheduler, RNG states and progress under ``out_dir/resume``.

    ``best`` is the network whose weights are kept (``best-EPOCH.safetensors``) when ``is_best``; a run
    without model selection (pre-training) passes neither.
    """
    folder = Path(out_dir) / RESUME_DIR
    folder.mkdir(parents=True, exist_ok=True)
    optimizer_state = optimizer.state_dict()
    tensors = {
        f"{name}.{k}": _plain(v) for name, module in modules.items() for k, v in module.state_dict().items()
    }
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "config": config,
        "progress": progress.__dict__,
        "param_groups": optimizer_state["param_groups"],
        "scheduler": scheduler.state_dict(),
        "rng_numpy": _numpy_rng_to_json(),
        "rng_python": _python_rng_to_json(),
    }
    epoch = progress.next_epoch - 1
    previous = _saved_state(folder)
    meta["last_file"] = f"last-{epoch}.safetensors"
    meta["best_file"] = (
        f"best-{epoch}.safetensors" if is_best else previous.get("best_file", "best.safetensors")
    )
    _atomic_save(tensors, folder / meta["last_file"])
    if is_best:
        _atomic_save({k: _plain(v) for k, v in best.state_dict().items()}, folder / meta["best_file"])
    (folder / "state.tmp").write_text(json.dumps(meta, allow_nan=True), encoding="utf-8")
    os.replace(folder / "state.tmp", folder / "state.json")
    for stale in {previous.get("last_file"), previous.get("best_file")} - {
        None,
        meta["last_file"],
        meta["best_file"],
    }:
        (folder / stale).unlink(missing_ok=True)


def interrupted(progress: Progress, out_dir: Path) -> TrainingInterrupted:
    """What Ctrl-C in a training loop tells the user: how far it got and how to go on."""
    return TrainingInterrupted(
        f"interrupted after {progress.next_epoch} completed epoch(s); run the same command with --resume "
        "to continue",
        path=out_dir,
    )


def seed_everything(seed: int) -> None:
    """Seed the Python, numpy and torch generators: those a resume state saves and restores."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def remove_resume_state(out_dir: Path) -> None:
    """Delete the files the last ``state.json`` names and ``state.json`` itself, then ``resume/``
    if that left it empty."""
    folder = Path(out_dir) / RESUME_DIR
    meta = _saved_state(folder)
    for name in {meta.get("last_file"), meta.get("best_file")} - {None}:
        (folder / name).unlink(missing_ok=True)
    (folder / "state.json").unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def load_resume_state(
    out_dir: Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler,
    config: dict,
) -> Progress:
    """Restore what ``save_resume_state`` wrote and return the progress to continue from.

    Raises:
        ModelDirError: nothing to resume, or the saved run used different options.
    """
    folder = Path(out_dir) / RESUME_DIR
    meta = _saved_state(folder)
    if not meta:
        raise ModelDirError("nothing to resume (no resume/state.json); start without --resume", path=out_dir)
    changed = sorted(
        k
        for k in config
        if k not in ("epochs", "device", "max_minutes") and meta["config"].get(k) != config[k]
    )
    if changed:
        raise ModelDirError(
            f"--resume with different options than the interrupted run: {changed}; use the same options",
            path=out_dir,
        )
    tensors = load_file(folder / meta.get("last_file", "last.safetensors"))
    for name, module in modules.items():
        module.load_state_dict(
            {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}
        )
    optimizer.load_state_dict({"state": _optimizer_state(tensors), "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    _restore_numpy_rng(meta["rng_numpy"])
    _restore_python_rng(meta["rng_python"])
    return Progress(**meta["progress"])


def load_best_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of the best validation epoch."""
    folder = Path(out_dir) / RESUME_DIR
    return load_file(folder / _saved_state(folder).get("best_file", "best.safetensors"))


def _saved_state(folder: Path) -> dict:
    """The last committed ``state.json``, or {} before the first epoch; a folder from before the epoch-named
    files lacks the names."""
    path = folder / "state.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous()


def _optimizer_state(tensors: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    return state


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    save_file(tensors, temporary)
    os.replace(temporary, path)


def _numpy_rng_to_json() -> list:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(position), int(has_gauss), float(cached)]


def _restore_numpy_rng(values: list) -> None:
    name, keys, position, has_gauss, cached = values
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def _python_rng_to_json() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_python_rng(values: list) -> None:
    version, internal, gauss = values
    random.setstate((version, tuple(internal), gauss))
