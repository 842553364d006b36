"""``covidct serve``: the web page and REST API on a model directory (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from covidct.cli.console import console, reports_errors
from covidct.cli.options import DeviceOpt, ModelDirArg
from covidct.errors import OptionError
from covidct.infer.engine_kind import Engine
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.device import Device


@reports_errors
def serve(
    model_dir: ModelDirArg,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but loopback needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="COVIDCT_API_KEY",
            show_envvar=True,
            help="Require 'Authorization: Bearer KEY' on the API. On "
            "the command line the key is visible to every user "
            "of the machine (ps): prefer COVIDCT_API_KEY or --api-key-file.",
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            "--api-key-file", help="Read the API key from this file (its first line); safer than --api-key."
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help=(
                "A browser origin allowed to call the API from its "
                "own pages (repeatable); CORS is off without one."
            ),
        ),
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="torch, or onnxruntime on the export that 'covidct export' wrote: onnx or onnx-int8.",
        ),
    ] = Engine.TORCH,
    device: DeviceOpt = Device.AUTO,
    workers: Annotated[
        int, typer.Option("--workers", help="Inference threads; concurrent requests are batched within each.")
    ] = 1,
) -> None:
    """Serve the drag-and-drop page at / and the REST API at /api/v1 (docs at /docs) until Ctrl-C.

    Uploads are processed in memory and never written to disk. Limits (upload size, file count,
    pixels, decoded voxels per request and in total, queue, connections, upload time) are read from
    COVIDCT_MAX_UPLOAD_BYTES, COVIDCT_MAX_FILES, COVIDCT_MAX_PIXELS, COVIDCT_MAX_REQUEST_VOXELS,
    COVIDCT_MAX_TOTAL_VOXELS, COVIDCT_QUEUE_SIZE, COVIDCT_MAX_BATCH, COVIDCT_LIMIT_CONCURRENCY and
    COVIDCT_BODY_TIMEOUT_S.
    """
    import uvicorn  # the server stack is imported only by this command
    from pydantic import ValidationError

    from covidct.server.app import create_app
    from covidct.server.settings import ServerSettings

    given = {
        "api_key": _read_key_file(api_key_file) if api_key_file else api_key,
        "cors_origins": cors_origin or None,
    }
    try:
        settings = ServerSettings(
            model_dir=model_dir,
            host=host,
            port=port,
            engine=engine,
            device=device,
            workers=workers,
            **{k: v for k, v in given.items() if v is not None},
        )
    except ValidationError as error:
        reasons = "; ".join(f"{error_item['loc'][0]}: {error_item['msg']}" for error_item in error.errors())
        raise OptionError(f"invalid server setting: {reasons}") from None
    app = create_app(settings)
    console.print(
        f"covidct serving {model_dir} at http://{host}:{port}/  (API docs: /docs)\n{RESEARCH_USE_STATEMENT}",
        highlight=False,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", limit_concurrency=settings.limit_concurrency)


def _read_key_file(path: Path) -> str:
    """The first line of ``path``, stripped.

    Raises:
        OptionError: the file cannot be read or its first line is empty.
    """
    try:
        key = path.read_text(encoding="utf-8").partition("\n")[0].strip()
    except OSError as error:
        raise OptionError(f"cannot read the API key file ({error.strerror})", path=path) from None
    if not key:
        raise OptionError("the API key file's first line is empty; write the key there", path=path)
    return key
