"""``GET /healthz``: the process is up and the model is loaded (open without an API
key, for load balancers)."""

from __future__ import annotations

from fastapi import APIRouter

from covidct.server.schemas import Health

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    """Answers while the server runs; the model is loaded before the server accepts connections."""
    return Health()
