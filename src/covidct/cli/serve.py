"""``covidct serve``: the web page and REST API on a model directory (FastAPI + uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from covidct.cli.console import console, reports_errors
from covidct.cli.options import DeviceOpt, ModelDirArg
from covidct.errors import OptionError
from covidct.infer.engines import Engine
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.device import Device


@reports_errors
def serve(
    model_dir: ModelDirArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but loopback needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="COVIDCT_API_KEY", help="Require 'Authorization: Bearer KEY' on the API.", show_envvar=True)] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="A browser origin allowed to call the API from its own pages (repeatable); CORS is off without one.")] = None,
    engine: Annotated[Engine, typer.Option("--engine", help="torch, or onnxruntime on the export that 'covidct export' wrote: onnx or onnx-int8.")] = Engine.TORCH,
    device: DeviceOpt = Device.AUTO,
    workers: Annotated[int, typer.Option("--workers", help="Inference threads; concurrent requests are batched within each.")] = 1,
) -> None:
    """Serve the drag-and-drop page at / and the REST API at /api/v1 (docs at /docs) until Ctrl-C.

    Uploads are processed in memory and never written to disk. Limits (upload size, file count,
    pixels, queue) are read from COVIDCT_MAX_UPLOAD_BYTES, COVIDCT_MAX_FILES, COVIDCT_MAX_PIXELS,
    COVIDCT_QUEUE_SIZE and COVIDCT_MAX_BATCH.
    """
    import uvicorn  # the server stack is imported only by this command
    from pydantic import ValidationError

    from covidct.server.app import create_app
    from covidct.server.settings import ServerSettings

    given = {"api_key": api_key, "cors_origins": cors_origin or None}
    try:
        settings = ServerSettings(
            model_dir=model_dir, host=host, port=port, engine=engine, device=device, workers=workers, **{k: v for k, v in given.items() if v is not None}
        )
    except ValidationError as error:
        reasons = "; ".join(f"{error_item['loc'][0]}: {error_item['msg']}" for error_item in error.errors())
        raise OptionError(f"invalid server setting: {reasons}") from None
    app = create_app(settings)
    console.print(f"covidct serving {model_dir} at http://{host}:{port}/  (API docs: /docs)\n{RESEARCH_USE_STATEMENT}", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="info")
