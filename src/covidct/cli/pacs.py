"""``covidct pacs watch`` and ``covidct pacs listen``: covidct in a hospital's image flow (research use only).

Thin: each command parses its options, loads the model and calls ``covidct.pacs.watch.watch`` or
``covidct.pacs.node.listen``; the heavy modules are imported inside the commands.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from covidct.cli.console import err_console, reports_errors
from covidct.cli.options import DeviceOpt, ModelDirArg
from covidct.errors import OptionError
from covidct.infer.engine_kind import Engine
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.device import Device

app = typer.Typer(
    help=f"Predict CT series from a PACS and store the results into their study.\n\n{RESEARCH_USE_STATEMENT}",
    no_args_is_help=True,
)

EngineOpt = Annotated[
    Engine,
    typer.Option(
        "--engine", help="torch, or onnxruntime on the export that 'covidct export' wrote: onnx or onnx-int8."
    ),
]
WindowOpt = Annotated[
    str | None,
    typer.Option("--window", help="HU window LEVEL,WIDTH (default: the model's, from model.json)."),
]
WorkDirOpt = Annotated[
    Path,
    typer.Option(
        "--work-dir", help="Where the state of processed series (and listen's received instances) is kept."
    ),
]
MaxSeriesOpt = Annotated[
    int,
    typer.Option(
        "--max-series-mb", help="Memory budget of one series' files; a larger series gets no result."
    ),
]


@app.command("watch")
@reports_errors
def watch_command(
    model_dir: ModelDirArg,
    dicomweb: Annotated[
        str, typer.Option("--dicomweb", help="DICOMweb base URL, e.g. http://pacs:8042/dicom-web.")
    ],
    interval: Annotated[float, typer.Option("--interval", help="Seconds between QIDO-RS polls.")] = 30.0,
    days: Annotated[
        int,
        typer.Option("--days", help="Only studies dated within this many days before today (0: any date)."),
    ] = 1,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter", help="Extra QIDO-RS filter KEY=VALUE, e.g. BodyPartExamined=CHEST (repeatable)."
        ),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="One poll: process what is due, then exit.")] = False,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="File with a bearer token (else $COVIDCT_PACS_TOKEN).")
    ] = None,
    basic_auth_file: Annotated[
        Path | None,
        typer.Option(
            "--basic-auth-file",
            help="File with 'user:password' (else $COVIDCT_PACS_USER / $COVIDCT_PACS_PASSWORD).",
        ),
    ] = None,
    work_dir: WorkDirOpt = Path("covidct-pacs"),
    engine: EngineOpt = Engine.TORCH,
    device: DeviceOpt = Device.AUTO,
    window: WindowOpt = None,
    max_series_mb: MaxSeriesOpt = 1024,
) -> None:
    """Poll DICOMweb for new CT series, predict each, STOW-RS an SR and a Grad-CAM capture into its study.

    Each series is processed once, across restarts (state in --work-dir); a PACS outage is retried with
    back-off.
    """
    from covidct.pacs.auth import read_credentials
    from covidct.pacs.dicomweb import DicomWebPacs
    from covidct.pacs.state import ProcessedSeries
    from covidct.pacs.watch import WatchOptions, watch

    options = WatchOptions(
        poll_interval_s=interval,
        days=days,
        filters=_parse_filters(filters or []),
        max_series_bytes=max_series_mb * 2**20,
        once=once,
    )
    if days < 0:
        raise OptionError(f"--days must be 0 or more; got {days}")
    pacs = DicomWebPacs(
        dicomweb, credentials=read_credentials(token_file=token_file, basic_auth_file=basic_auth_file)
    )
    predictor, model = _load(model_dir, engine=engine, device=device, window=window)
    state = ProcessedSeries(work_dir / "watch-state.json")
    counts = _run_until_stopped(lambda stop: watch(predictor, pacs, state, model, options, stop=stop))
    err_console.print(f"pacs watch stopped: {_counts(counts)} this run", highlight=False)


@app.command("listen")
@reports_errors
def listen_command(
    model_dir: ModelDirArg,
    destination: Annotated[
        str, typer.Option("--destination", help="Where results are C-STOREd: AE_TITLE@HOST:PORT.")
    ],
    ae_title: Annotated[str, typer.Option("--ae-title", help="This node's AE title.")] = "COVIDCT",
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="DICOM port to listen on.")] = 11112,
    quiet_seconds: Annotated[
        float,
        typer.Option(
            "--quiet-seconds", help="A series is complete after this many seconds without a new instance."
        ),
    ] = 10.0,
    work_dir: WorkDirOpt = Path("covidct-pacs"),
    engine: EngineOpt = Engine.TORCH,
    device: DeviceOpt = Device.AUTO,
    window: WindowOpt = None,
    max_series_mb: MaxSeriesOpt = 1024,
) -> None:
    """Receive series by C-STORE, predict each when complete, C-STORE an SR and a Grad-CAM capture onward.

    Received instances are kept in --work-dir until their series is handled, so a crash loses none.
    """
    from covidct.pacs.node import DicomNode, ListenOptions, listen
    from covidct.pacs.state import ProcessedSeries

    options = ListenOptions(
        local=DicomNode(ae_title, host, port),
        destination=_parse_node(destination),
        spool_dir=work_dir / "spool",
        quiet_s=quiet_seconds,
        max_series_bytes=max_series_mb * 2**20,
    )
    predictor, model = _load(model_dir, engine=engine, device=device, window=window)
    state = ProcessedSeries(work_dir / "listen-state.json")
    counts = _run_until_stopped(lambda stop: listen(predictor, model, state, options, stop=stop))
    err_console.print(f"pacs listen stopped: {_counts(counts)} this run", highlight=False)


def _load(model_dir: Path, *, engine: Engine, device: Device, window: str | None):
    from covidct import __version__, load_model
    from covidct.cli.predict import warn_if_window_differs
    from covidct.pacs.identity import ModelIdentity
    from covidct.preprocess.window import HuWindow

    predictor = load_model(
        model_dir, engine=engine, device=device, window=None if window is None else HuWindow.parse(window)
    )
    warn_if_window_differs(predictor)
    _log_to_stderr()
    err_console.print(RESEARCH_USE_STATEMENT, highlight=False)
    return predictor, ModelIdentity.of(
        model_dir, checkpoint_sha256=predictor.card.checkpoint_sha256, covidct_version=__version__
    )


def _run_until_stopped(run) -> dict[str, int]:
    """Run with a stop event: a first Ctrl-C (or SIGTERM) finishes the series in hand, a second stops now."""
    stop = threading.Event()

    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        logging.getLogger("covidct.pacs").info(
            "stopping after the series in hand (Ctrl-C again to stop now; nothing is lost)"
        )
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run(stop)
    except KeyboardInterrupt:
        err_console.print("stopped; the series in hand will be processed on the next start", highlight=False)
        raise typer.Exit(130) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_to_stderr() -> None:
    """Progress and one summary line per series on stderr, with time stamps (the log of a service)."""
    from rich.logging import RichHandler

    logger = logging.getLogger("covidct.pacs")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=err_console, show_path=False, markup=False, highlighter=None))
        logger.setLevel(logging.INFO)


def _parse_filters(values: list[str]) -> dict[str, str]:
    filters = {}
    for value in values:
        key, equals, expected = value.partition("=")
        if not equals or not key:
            raise OptionError(f"--filter must be KEY=VALUE, e.g. BodyPartExamined=CHEST; got {value!r}")
        filters[key] = expected
    return filters


def _parse_node(value: str):
    from covidct.pacs.node import DicomNode

    ae_title, at, address = value.partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and ae_title and host and port.isdigit()):
        raise OptionError(
            f"--destination must be AE_TITLE@HOST:PORT, e.g. ORTHANC@pacs.example.org:4242; got {value!r}"
        )
    return DicomNode(ae_title, host, int(port))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items())
