"""``covidct pacs watch``: poll DICOMweb for new CT series, predict each, store the results into its study."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import partial

from covidct.infer.predictor import Predictor
from covidct.pacs.dicomweb import DicomWebPacs, PacsUnavailable, SeriesRef
from covidct.pacs.identity import ModelIdentity, ResultUids
from covidct.pacs.service import DEFAULT_MAX_SERIES_BYTES, SeriesJob, handle_series
from covidct.pacs.state import BACKOFF_BASE_S, BACKOFF_MAX_S, ProcessedSeries, SeriesStatus

logger = logging.getLogger("covidct.pacs")


@dataclass(frozen=True)
class WatchOptions:
    """How to poll: every ``poll_interval_s``; studies of the last ``days`` days (0: any); ``filters``."""

    poll_interval_s: float = 30.0
    days: int = 1
    filters: dict[str, str] = field(default_factory=dict)
    max_series_bytes: int = DEFAULT_MAX_SERIES_BYTES
    once: bool = False


def watch(
    predictor: Predictor,
    pacs: DicomWebPacs,
    state: ProcessedSeries,
    model: ModelIdentity,
    options: WatchOptions,
    *,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Poll until ``stop`` is set (one cycle with ``options.once``); return series per outcome."""
    stop = stop or threading.Event()
    counts = {status.value: 0 for status in SeriesStatus}
    outage_wait_s = BACKOFF_BASE_S
    while not stop.is_set():
        try:
            found = pacs.ct_series(days=options.days, filters=options.filters)
            outage_wait_s = BACKOFF_BASE_S
        except PacsUnavailable as error:
            logger.warning("query failed: %s; next poll in %.0f s", error, outage_wait_s)
            if options.once or stop.wait(outage_wait_s):
                break
            outage_wait_s = min(2 * outage_wait_s, BACKOFF_MAX_S)
            continue
        due = [series for series in found if state.is_due(series.key)]
        if due:
            logger.info("poll: %d CT series found, %d to process", len(found), len(due))
        for series in due:
            if stop.is_set():
                break
            counts[handle_series(_job(pacs, series, model, options), predictor, model, state).value] += 1
        if options.once or stop.wait(options.poll_interval_s):
            break
    return counts


def _job(pacs: DicomWebPacs, series: SeriesRef, model: ModelIdentity, options: WatchOptions) -> SeriesJob:
    uids = ResultUids.for_series(series.series_uid, model)
    return SeriesJob(
        key=series.key,
        series_uid=series.series_uid,
        fetch=partial(pacs.retrieve, series, max_bytes=options.max_series_bytes),
        store=partial(pacs.store, series),
        already_stored=partial(pacs.has_results, series, uids),
    )
