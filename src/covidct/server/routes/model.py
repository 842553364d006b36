"""``GET /api/v1/model``: the served model's card, in its public view."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request

from covidct.model.card import ModelCard
from covidct.server.schemas import ModelInfo

router = APIRouter()

_WITHHELD = "(withheld)"
# POSIX or Windows absolute paths: training folders are often named after patients or hold the host's layout.
_ABSOLUTE_PATH = re.compile(r"^(/|[A-Za-z]:[\\/]|\\\\)")


@router.get("/model", response_model=ModelInfo, tags=["model"])
async def model_info(request: Request) -> ModelInfo:
    """What the model predicts, its threshold and input size, whether it has the not-a-CT
    guard, and its model card."""
    predictor, settings = request.app.state.predictor, request.app.state.settings
    card = predictor.card
    return ModelInfo(
        classes=list(card.classes),
        positive_class=card.positive_class,
        threshold=card.decision.threshold,
        image_size=card.preprocessing.image_size,
        has_ood_guard=predictor.detector is not None,
        engine=str(settings.engine),
        card=public_card(card),
    )


def public_card(card: ModelCard) -> dict:
    """model.json without what only the training machine should know: the data's location, the paths of files
    it could not use (counted instead), the host's kernel string, and any other absolute path."""
    values = card.to_dict()
    data = dict(values["data"])
    data["origin"] = _WITHHELD
    data["unusable_files"] = len(data.get("unusable_files") or [])
    values["data"] = data
    values["environment"] = {key: value for key, value in values["environment"].items() if key != "platform"}
    return _without_paths(values)


def _without_paths(value: object) -> object:
    if isinstance(value, dict):
        return {key: _without_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_paths(item) for item in value]
    if isinstance(value, str) and _ABSOLUTE_PATH.match(value):
        return _WITHHELD
    return value
