"""``covidct pacs listen``: a DICOM node that receives series by C-STORE, C-STOREs results onward.

The storage SCP accepts every storage SOP class, so a series of another modality is received,
logged with its reason and given no result, rather than refused at the door. A series is complete
when no new instance has arrived for ``quiet_s`` seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from covidct.infer.predictor import Predictor
from covidct.pacs.dicomweb import PacsUnavailable
from covidct.pacs.identity import ModelIdentity
from covidct.pacs.service import DEFAULT_MAX_SERIES_BYTES, SeriesJob, handle_series
from covidct.pacs.spool import Spool
from covidct.pacs.state import ProcessedSeries, SeriesStatus

logger = logging.getLogger("covidct.pacs")

_SUCCESS, _OUT_OF_RESOURCES = 0x0000, 0xA700


@dataclass(frozen=True)
class DicomNode:
    """A DICOM application entity: AE title, host, port."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class ListenOptions:
    """This node (``local``), where results go (``destination``), spool folder, when a series is complete."""

    local: DicomNode
    destination: DicomNode
    spool_dir: Path
    quiet_s: float = 10.0
    scan_interval_s: float = 1.0
    max_series_bytes: int = DEFAULT_MAX_SERIES_BYTES


def listen(
    predictor: Predictor,
    model: ModelIdentity,
    state: ProcessedSeries,
    options: ListenOptions,
    *,
    stop: threading.Event,
) -> dict[str, int]:
    """Receive, predict and forward until ``stop`` is set; return the count of series per outcome this run."""
    spool = Spool(options.spool_dir)
    counts = {status.value: 0 for status in SeriesStatus}
    server = _storage_scp(options.local, spool)
    logger.info(
        "listening as %s on %s:%d; results go to %s",
        options.local.ae_title,
        options.local.host,
        options.local.port,
        options.destination.ae_title,
    )
    try:
        while not stop.wait(options.scan_interval_s):
            for folder in spool.quiet_series(options.quiet_s):
                status = _handle_folder(folder, spool, predictor, model, state, options)
                if status is not None:
                    counts[status.value] += 1
    finally:
        server.shutdown()
    return counts


def _handle_folder(
    folder: Path,
    spool: Spool,
    predictor: Predictor,
    model: ModelIdentity,
    state: ProcessedSeries,
    options: ListenOptions,
) -> SeriesStatus | None:
    key, files = folder.name, spool.files(folder)
    record = state.get(key)
    if record is not None and record.status is not SeriesStatus.RETRY:
        logger.warning(
            "series %s: received again after it was %s; the new instances are left out",
            key,
            record.status.value,
        )
        spool.remove(files)
        return None
    if not state.is_due(key):
        return None
    job = SeriesJob(
        key=key,
        series_uid=spool.series_uid(folder),
        fetch=partial(spool.read, files, max_bytes=options.max_series_bytes),
        store=partial(send_results, options.local.ae_title, options.destination),
    )
    status = handle_series(job, predictor, model, state)
    if status is not SeriesStatus.RETRY:
        spool.remove(files)
    return status


def send_results(calling_ae_title: str, destination: DicomNode, objects: Sequence[Dataset]) -> None:
    """C-STORE the result objects to ``destination`` in one association.

    Raises:
        PacsUnavailable: no association, or an object not stored (the status is given).
    """
    ae = AE(ae_title=calling_ae_title)
    for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    association = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not association.is_established:
        raise PacsUnavailable(
            f"no association with {destination.ae_title} at {destination.host}:{destination.port}"
        )
    try:
        for dataset in objects:
            status = association.send_c_store(dataset)
            code = getattr(status, "Status", None)
            if code is None or (
                code != _SUCCESS and not 0xB000 <= code <= 0xBFFF
            ):  # 0xBxxx: stored with a warning
                raise PacsUnavailable(
                    f"{destination.ae_title} did not store a {dataset.Modality} result (status {_hex(code)})"
                )
    finally:
        association.release()


def _storage_scp(local: DicomNode, spool: Spool):
    ae = AE(ae_title=local.ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    return ae.start_server(
        (local.host, local.port), block=False, evt_handlers=[(evt.EVT_C_STORE, partial(_on_store, spool))]
    )


def _on_store(spool: Spool, event) -> int:
    """Write the received instance to the spool before answering success; answer 0xA700 when that fails."""
    try:
        dataset = event.dataset
        spool.add(
            str(dataset.SeriesInstanceUID),
            str(dataset.SOPInstanceUID),
            event.encoded_dataset(include_meta=True),
        )
    except Exception as error:  # noqa: BLE001 - a failure to keep it goes to the sender as a status
        logger.error(
            "an instance could not be kept (%s); the sender was told to send it again", type(error).__name__
        )
        return _OUT_OF_RESOURCES
    return _SUCCESS


def _hex(code: int | None) -> str:
    return "none" if code is None else f"0x{code:04X}"
