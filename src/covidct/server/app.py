"""``create_app(settings)``: the FastAPI application behind ``covidct serve``.

The model is loaded here, before the server accepts connections, so a bad model directory stops
``covidct serve`` with one line instead of failing every request. Client mistakes (``CovidctError``)
become 4xx with ``{"detail": "<file>: <reason>"}``, the line the CLI would print; a full queue is 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from covidct import __version__
from covidct.errors import (
    BusyError,
    CovidctError,
    UnsupportedUploadError,
    UploadTimeoutError,
    UploadTooLargeError,
)
from covidct.infer.predictor import Predictor, load_model
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.io.budget import VoxelPool
from covidct.server.auth import require_api_key
from covidct.server.hosts import LoopbackHostGuard, needs_host_check
from covidct.server.inference import InferencePool, ServerBusyError
from covidct.server.routes import docs, health, model, page, predict
from covidct.server.settings import ServerSettings, check_exposure

_STATUS_BY_ERROR = (
    (UploadTooLargeError, status.HTTP_413_CONTENT_TOO_LARGE),
    (UnsupportedUploadError, status.HTTP_415_UNSUPPORTED_MEDIA_TYPE),
    (UploadTimeoutError, status.HTTP_408_REQUEST_TIMEOUT),
)


def create_app(settings: ServerSettings, *, predictor: Predictor | None = None) -> FastAPI:
    """The app for ``settings``, with ``predictor`` or the model loaded from ``settings.model_dir``.

    Raises:
        OptionError: a non-loopback host without an API key, or an engine/device that cannot run.
        ModelDirError: the model directory is missing files or does not match its card.
    """
    check_exposure(settings)
    predictor = predictor or load_model(settings.model_dir, device=settings.device, engine=settings.engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with InferencePool(
            predictor, workers=settings.workers, queue_size=settings.queue_size, max_batch=settings.max_batch
        ) as pool:
            app.state.pool = pool
            yield

    app = FastAPI(
        title="covidct",
        version=__version__,
        description=f"{RESEARCH_USE_STATEMENT}\n\nUploads are processed in memory and never written to disk.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings, app.state.predictor = settings, predictor
    app.state.voxel_pool = VoxelPool(settings.max_total_voxels)
    app.include_router(health.router)
    app.include_router(page.router)
    app.include_router(docs.router)
    api = [Depends(require_api_key)]
    app.include_router(predict.router, prefix="/api/v1", dependencies=api)
    app.include_router(model.router, prefix="/api/v1", dependencies=api)
    app.mount("/static", StaticFiles(directory=str(page.STATIC_DIR)), name="static")
    app.mount(docs.ASSETS_URL, StaticFiles(directory=docs.ASSETS_DIR), name="docs-assets")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization"],
        )
    if needs_host_check(settings):
        app.add_middleware(LoopbackHostGuard, allowed=settings.allowed_hosts)
    app.add_exception_handler(CovidctError, _client_error)
    app.add_exception_handler(ServerBusyError, _busy)
    app.add_exception_handler(BusyError, _busy)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    return app


async def _client_error(request: Request, error: CovidctError) -> JSONResponse:
    code = next(
        (code for kind, code in _STATUS_BY_ERROR if isinstance(error, kind)),
        status.HTTP_422_UNPROCESSABLE_CONTENT,
    )
    return JSONResponse({"detail": str(error)}, status_code=code)


async def _busy(request: Request, error: ServerBusyError | BusyError) -> JSONResponse:
    return JSONResponse(
        {"detail": str(error)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "1"}
    )


async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors, as one readable line in the API's one error shape."""
    reasons = [f"{' '.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()]
    return JSONResponse({"detail": "; ".join(reasons)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
