"""The resume state on disk: ``state.json`` commits an epoch, so a crash mid-write never mixes two epochs."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from covidct.train import resume
from covidct.train.resume import (
    Progress,
    load_best_weights,
    load_resume_state,
    remove_resume_state,
    save_resume_state,
)

CONFIG = {"lr": 0.1}


def training_parts() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return net, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)


def save(folder, net, optimizer, scheduler, *, epoch: int, is_best: bool) -> None:
    progress = Progress(next_epoch=epoch + 1, best_epoch=epoch if is_best else 0)
    save_resume_state(
        folder,
        modules={"net": net},
        best=net,
        optimizer=optimizer,
        scheduler=scheduler,
        progress=progress,
        config=CONFIG,
        is_best=is_best,
    )


def test_only_the_files_the_state_names_are_kept(tmp_path):
    net, optimizer, scheduler = training_parts()
    save(tmp_path, net, optimizer, scheduler, epoch=0, is_best=True)
    save(tmp_path, net, optimizer, scheduler, epoch=1, is_best=False)

    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == [
        "best-0.safetensors",
        "last-1.safetensors",
        "state.json",
    ]


def test_a_crash_before_the_state_is_replaced_leaves_the_previous_epoch_whole(tmp_path, monkeypatch):
    net, optimizer, scheduler = training_parts()
    save(tmp_path, net, optimizer, scheduler, epoch=0, is_best=True)
    weights_after_epoch_0 = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)  # epoch 1 trains on
    real_replace = os.replace

    def crash_on_the_state(source, target):
        if str(source).endswith("state.tmp"):
            raise OSError("no space left on device")
        real_replace(source, target)

    monkeypatch.setattr(resume.os, "replace", crash_on_the_state)
    with pytest.raises(OSError, match="no space left"):
        save(tmp_path, net, optimizer, scheduler, epoch=1, is_best=True)
    monkeypatch.undo()

    fresh, fresh_optimizer, fresh_scheduler = training_parts()
    with torch.no_grad():
        fresh.weight.zero_()
    progress = load_resume_state(
        tmp_path, modules={"net": fresh}, optimizer=fresh_optimizer, scheduler=fresh_scheduler, config=CONFIG
    )

    assert progress.next_epoch == 1
    assert torch.equal(fresh.weight, weights_after_epoch_0)
    assert torch.equal(load_best_weights(tmp_path)["weight"], weights_after_epoch_0)


def test_files_covidct_did_not_write_are_never_deleted(tmp_path):
    """A user's own weights in resume/ survive each epoch's clean-up and the final one (issue 15)."""
    (tmp_path / "resume").mkdir()
    (tmp_path / "resume" / "mine.safetensors").write_bytes(b"the user's own weights")
    net, optimizer, scheduler = training_parts()
    for epoch in range(3):
        save(tmp_path, net, optimizer, scheduler, epoch=epoch, is_best=epoch == 1)

    kept = sorted(p.name for p in (tmp_path / "resume").iterdir())
    remove_resume_state(tmp_path)

    assert kept == ["best-1.safetensors", "last-2.safetensors", "mine.safetensors", "state.json"]
    assert [p.name for p in (tmp_path / "resume").iterdir()] == ["mine.safetensors"]


def test_the_resume_folder_goes_when_only_covidct_files_were_in_it(tmp_path):
    net, optimizer, scheduler = training_parts()
    save(tmp_path, net, optimizer, scheduler, epoch=0, is_best=True)

    remove_resume_state(tmp_path)

    assert not (tmp_path / "resume").exists()
