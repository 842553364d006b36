"""What ``watch`` and ``listen`` share: the memory budget per series, one series handled and recorded.

``handle_series`` runs one series through fetch -> predict -> store and records the outcome in the
state file: DONE after the store, SKIPPED with a reason for a series that cannot get a result,
RETRY with back-off for a PACS that is down. Logs carry hashed keys only (``privacy_key``).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from covidct.errors import InputError
from covidct.infer.predictor import Predictor
from covidct.pacs.dicomweb import PacsUnavailable
from covidct.pacs.identity import ModelIdentity
from covidct.pacs.series import Instance, predict_series
from covidct.pacs.state import ProcessedSeries, SeriesStatus

logger = logging.getLogger("covidct.pacs")

# Bytes of one series' files held in memory: a 1,000-slice 512 x 512 int16 series is 0.5 GiB.
DEFAULT_MAX_SERIES_BYTES = 1024 * 2**20


@dataclass(frozen=True)
class SeriesJob:
    """One series to handle: its key (hashed UID), its SeriesInstanceUID, and how to fetch and store it.

    ``fetch`` returns the instances (raises ``InputError`` past the budget, ``PacsUnavailable`` on an
    outage); ``store`` sends the result objects; ``already_stored`` says whether a previous run stored
    them before it could record that (so they are not stored twice).
    """

    key: str
    series_uid: str
    fetch: Callable[[], list[Instance]]
    store: Callable[[Sequence[Dataset]], None]
    already_stored: Callable[[], bool] = lambda: False


def handle_series(
    job: SeriesJob, predictor: Predictor, model: ModelIdentity, state: ProcessedSeries
) -> SeriesStatus:
    """Fetch, predict and store one series, record the outcome, and log progress and one summary line."""
    name = f"series {job.key}"
    started = time.perf_counter()
    try:
        if job.already_stored():
            state.mark(job.key, SeriesStatus.DONE, summary="results were already in the PACS")
            logger.info("%s: results already in the PACS (stored by an earlier run); recorded as done", name)
            return SeriesStatus.DONE
        instances = job.fetch()
        fetched = time.perf_counter()
        logger.info(
            "%s: %d instances received (%.1f MiB) in %.1f s; predicting",
            name,
            len(instances),
            _mib(instances),
            fetched - started,
        )
        outcome = predict_series(predictor, instances, model, source=name, series_uid=job.series_uid)
        del instances
        predicted = time.perf_counter()
        if outcome.reason:
            state.mark(job.key, SeriesStatus.SKIPPED, reason=outcome.reason)
            logger.warning("%s: %s", name, outcome.summary())
            return SeriesStatus.SKIPPED
        job.store(outcome.objects)
    except InputError as error:
        state.mark(job.key, SeriesStatus.SKIPPED, reason=str(error))
        logger.warning("%s: no result: %s", name, error)
        return SeriesStatus.SKIPPED
    except PacsUnavailable as error:
        record = state.mark(job.key, SeriesStatus.RETRY, reason=str(error))
        wait_s = max(0.0, record.next_attempt_at - time.time())
        logger.warning(
            "%s: %s; attempt %d, retrying in %.0f s or later", name, error, record.attempts, wait_s
        )
        return SeriesStatus.RETRY
    # A bug on one series must neither stop the service nor block it
    except Exception as error:  # noqa: BLE001
        where = traceback.extract_tb(error.__traceback__)[-1]
        # The type and the line only: an exception's message may quote a patient attribute.
        place = f"{Path(where.filename).name}:{where.lineno}"
        reason = f"unexpected {type(error).__name__} at {place} (a bug; please report it)"
        state.mark(job.key, SeriesStatus.SKIPPED, reason=reason)
        logger.error("%s: no result: %s", name, reason)
        return SeriesStatus.SKIPPED
    state.mark(job.key, SeriesStatus.DONE, summary=outcome.summary())
    total = time.perf_counter() - started
    logger.info(
        "%s: %s; SR + Secondary Capture stored; %.1f s (predict %.1f s)",
        name,
        outcome.summary(),
        total,
        predicted - fetched,
    )
    return SeriesStatus.DONE


def _mib(instances: Sequence[Instance]) -> float:
    return sum(len(data) for _, data in instances) / 2**20
