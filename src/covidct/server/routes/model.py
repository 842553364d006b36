"""``GET /api/v1/model``: the served model's card."""

from __future__ import annotations

from fastapi import APIRouter, Request

from covidct.server.schemas import ModelInfo

router = APIRouter()


@router.get("/model", response_model=ModelInfo, tags=["model"])
async def model_info(request: Request) -> ModelInfo:
    """What the model predicts, its threshold and input size, whether it has the not-a-CT guard, and its model card."""
    predictor, settings = request.app.state.predictor, request.app.state.settings
    card = predictor.card
    return ModelInfo(
        classes=list(card.classes), positive_class=card.positive_class, threshold=card.decision.threshold,
        image_size=card.preprocessing.image_size, has_ood_guard=predictor.detector is not None, engine=str(settings.engine), card=card.to_dict(),
    )
