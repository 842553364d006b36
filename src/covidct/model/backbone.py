"""A self-supervised backbone folder (``covidct pretrain --out DIR``): ``backbone.safetensors`` and
``backbone.json``, written atomically here and checked here before fine-tuning starts from them.

``backbone.safetensors`` holds a torchvision ResNet-50 state dict without ``fc`` (the query encoder's
backbone), so any ``--weights`` reader takes it too; ``backbone.json`` holds the method, hyper-parameters,
start weights, the sha256 of the weights file and the content hash of every file pre-trained on.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from covidct.data.content_hash import content_sha256
from covidct.errors import InputError, ModelDirError
from covidct.model.architecture import StrideVariant
from covidct.model.integrity import file_sha256
from covidct.model.pretrained import Backbone, Pretrained
from covidct.model.weights import load_weights_file

BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_CARD = "backbone.json"
BACKBONE_FORMAT = "covidct-backbone/1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The keys of backbone.json that fine-tuning reads, and what each must be.
_REQUIRED: dict[str, type] = {
    "method": str,
    "hyperparameters": dict,
    "preprocessing": dict,
    "stride_variant": str,
    "start_weights": dict,
    "weights_sha256": str,
    "n_slices": int,
    "input_sha256": dict,
}
_JSON_KIND = {str: "a string", dict: "an object", int: "a whole number"}


def save_backbone(
    out_dir: Path, state: dict[str, torch.Tensor], *, stride_variant: StrideVariant, card: dict[str, Any]
) -> dict[str, Any]:
    """Write ``state`` (no ``fc``) and ``card`` plus the weights' sha256 into ``out_dir``; return the card
    as written (JSON values).

    Each file goes to a temporary name first and is renamed into place, the card last: a crash leaves
    either the previous pair or a card-less new weights file, which ``read_backbone`` refuses.
    """
    out_dir = Path(out_dir)
    weights = out_dir / BACKBONE_WEIGHTS
    partial = weights.with_name(weights.name + ".partial")
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    save_file(tensors, str(partial), metadata={"stride_variant": str(stride_variant)})
    card = {
        "format": BACKBONE_FORMAT,
        **card,
        "stride_variant": str(stride_variant),
        "weights_file": BACKBONE_WEIGHTS,
        "weights_sha256": file_sha256(partial),
    }
    os.replace(partial, weights)
    card_path = out_dir / BACKBONE_CARD
    partial_card = card_path.with_name(card_path.name + ".partial")
    text = json.dumps(card, indent=2, allow_nan=False) + "\n"
    partial_card.write_text(text, encoding="utf-8")
    os.replace(partial_card, card_path)
    return json.loads(text)


def read_backbone(directory: Path) -> Pretrained:
    """Return the start weights of a ``covidct pretrain`` folder, after checking its card and weights.

    Raises:
        ModelDirError: the folder, its backbone.json or backbone.safetensors is missing; the card is not
            JSON, not a backbone card or lacks a key; the weights' sha256 differs from the card's.
        WeightsError: backbone.safetensors is not a ResNet-50 state dict.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(
            f"no such folder; expected one 'covidct pretrain' wrote ({BACKBONE_WEIGHTS}, {BACKBONE_CARD})",
            path=directory,
        )
    card = _read_card(directory / BACKBONE_CARD)
    weights = directory / BACKBONE_WEIGHTS
    if not weights.is_file():
        raise ModelDirError(
            f"missing; {BACKBONE_CARD} beside it describes weights that are not there", path=weights
        )
    found = file_sha256(weights)
    if found != card["weights_sha256"]:
        raise ModelDirError(
            f"sha256 {found[:12]}... differs from weights_sha256 in {BACKBONE_CARD} "
            f"({card['weights_sha256'][:12]}...); the folder was modified or mixes two runs: "
            "run 'covidct pretrain' again",
            path=weights,
        )
    state, variant = load_weights_file(weights)
    facts = {
        "method": card["method"],
        "weights_sha256": found,
        "start_weights": card["start_weights"],
        "n_slices": card["n_slices"],
        "n_files": len(card["input_sha256"]),
        **{
            key: card[key]
            for key in ("epochs_run", "hyperparameters", "created", "covidct_version")
            if key in card
        },
    }
    backbone = Backbone(facts, frozenset(card["input_sha256"].values()), card["preprocessing"])
    return Pretrained(
        state, variant or StrideVariant(card["stride_variant"]), card["start_weights"], backbone
    )


def refuse_seen_test_files(test_paths: list[Path], backbone: Backbone, *, origin: Path) -> None:
    """Check that no test file was among the backbone's pre-training inputs (by content, not by name).

    Raises:
        InputError: naming how many test files the backbone saw, and one of them.
    """
    seen = [path for path in test_paths if path.exists() and content_sha256(path) in backbone.input_sha256]
    if seen:
        raise InputError(
            f"{len(seen)} of the {len(test_paths)} test files (e.g. {seen[0].name}) are among the files "
            f"the --backbone was pre-trained on ({BACKBONE_CARD} lists their content hashes), so test "
            "figures would be optimistic; pre-train on data whose split column marks these files as test "
            "(covidct pretrain leaves test rows out), or train without --backbone",
            path=origin,
        )


def _read_card(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelDirError(
            f"missing; expected the card 'covidct pretrain' writes beside {BACKBONE_WEIGHTS}", path=path
        )
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelDirError(
            f"not valid JSON ({error}); expected the card 'covidct pretrain' writes", path=path
        ) from None
    if not isinstance(card, dict) or card.get("format") != BACKBONE_FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise ModelDirError(
            f"format is {found!r}, expected {BACKBONE_FORMAT!r}: not a covidct backbone card", path=path
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(card.get(key), kind) or isinstance(card.get(key), bool):
            raise ModelDirError(
                f"'{key}' is {card.get(key)!r}; expected {_JSON_KIND[kind]}, as 'covidct pretrain' writes it",
                path=path,
            )
    hashes = card["input_sha256"].values()
    if not _SHA256.match(card["weights_sha256"]) or not all(
        isinstance(h, str) and _SHA256.match(h) for h in hashes
    ):
        raise ModelDirError("weights_sha256 and input_sha256 must hold 64 hex digits per file", path=path)
    return card
