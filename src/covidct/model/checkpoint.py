"""A model directory: ``model.safetensors`` (weights, no pickle) plus ``model.json`` (the card)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from covidct.errors import ModelDirError
from covidct.model.card import ModelCard, read_card, write_card
from covidct.model.integrity import WEIGHTS_FILE, checked_weights_path, file_sha256
from covidct.model.network import build_resnet50


def save_model_dir(model_dir: Path, model: nn.Module, card: ModelCard) -> ModelCard:
    """Write the weights and the card (which records the weights' hash); return the card as written."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().float().cpu().contiguous() for name, tensor in model.state_dict().items()}
    weights_path = model_dir / WEIGHTS_FILE
    save_file(state, weights_path, metadata={"format": "covidct", "stride_variant": str(card.stride_variant)})
    card = dataclasses.replace(card, checkpoint_sha256=file_sha256(weights_path))
    write_card(model_dir, card)
    return card


def load_model_dir(model_dir: Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild the network described by the card and load its weights on the CPU, in eval mode.

    Raises:
        ModelDirError: missing files, a card without the weights' hash or a weights file whose hash differs
            from it, or weights that do not fit the architecture.
    """
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    weights_path = checked_weights_path(model_dir, card)
    try:
        state = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise ModelDirError(f"cannot read {WEIGHTS_FILE} ({error})", path=model_dir) from None
    head_classes = state["fc.weight"].shape[0] if "fc.weight" in state else None
    if head_classes != len(card.classes):
        raise ModelDirError(
            f"model.json names {len(card.classes)} classes but "
            f"{WEIGHTS_FILE} has a {head_classes}-class head",
            path=model_dir,
        )
    model = build_resnet50(num_classes=len(card.classes), stride_variant=card.stride_variant)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise ModelDirError(
            f"weights do not fit a {len(card.classes)}-class ResNet-50 ({first_line})", path=model_dir
        ) from None
    return model.eval(), card
