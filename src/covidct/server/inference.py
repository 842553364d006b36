"""Inference off the event loop: a bounded queue, a bounded thread pool, and micro-batching.

Requests put a job on a bounded asyncio queue and await its result; when the queue is full the
request fails at once with ``ServerBusyError`` (503) instead of piling up. Each worker takes the next
job plus every job already waiting (up to ``max_batch`` slices) and runs them as one
``Predictor.predict_slices`` call in a thread, so concurrent single-slice requests share one forward
pass and the event loop keeps answering (health checks, uploads) while the network runs. Whole
studies (``run``) go through the same queue and threads but run alone.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Self, TypeVar

import numpy as np

from covidct.infer.predictor import Explanation, Predictor

T = TypeVar("T")


class ServerBusyError(Exception):
    """Every worker is busy and the queue is full: the client should retry later (HTTP 503)."""


@dataclass
class _Job:
    """Slices to predict (batched with other jobs), or ``call``: other work that runs
    alone (a whole study)."""

    names: list[str]
    slices: list[np.ndarray]
    explain: bool
    call: Callable[[], object] | None = None
    result: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class InferencePool:
    """Runs ``predictor.predict_slices`` for many concurrent requests on ``workers`` threads.

    Use as ``async with InferencePool(...) as pool: await pool.predict(...)`` inside the running loop.
    """

    def __init__(self, predictor: Predictor, *, workers: int, queue_size: int, max_batch: int) -> None:
        self.predictor = predictor
        self.workers = workers
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="covidct-infer")
        self._tasks = [
            asyncio.create_task(self._work(), name=f"covidct-infer-{i}") for i in range(self.workers)
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def predict(
        self, names: Sequence[str], slices: Sequence[np.ndarray], *, explain: bool = False
    ) -> list[Explanation]:
        """One ``Explanation`` per slice, computed in a worker thread (batched with other waiting requests).

        Raises:
            ServerBusyError: the queue is full.
        """
        return await self._submit(_Job(list(names), list(slices), explain))

    async def run(self, call: Callable[[], T]) -> T:
        """``call()``'s result, computed in a worker thread on its own (not batched),
        e.g. a study's prediction.

        Raises:
            ServerBusyError: the queue is full.
        """
        return await self._submit(_Job([], [], False, call))

    async def _submit(self, job: _Job) -> object:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ServerBusyError(
                f"the server is busy ({self._queue.maxsize} requests waiting); retry in a few seconds"
            ) from None
        return await job.result

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            n_slices = len(batch[0].names)
            while n_slices < self.max_batch and batch[-1].call is None and not self._queue.empty():
                batch.append(self._queue.get_nowait())
                n_slices += len(batch[-1].names)
            for job in batch:
                if job.call is not None:
                    await self._run([job], job.call, lambda result: [result])
            # Grad-CAM needs a backward pass: explained and plain slices run as separate calls.
            for explain in (False, True):
                jobs = [job for job in batch if job.call is None and job.explain is explain]
                if jobs:
                    names = [name for job in jobs for name in job.names]
                    slices = [gray for job in jobs for gray in job.slices]
                    call = functools.partial(self.predictor.predict_slices, names, slices, explain=explain)
                    await self._run(jobs, call, functools.partial(_split, jobs))

    async def _run(
        self, jobs: list[_Job], call: Callable[[], object], split: Callable[[object], list]
    ) -> None:
        """Run ``call`` in the pool and hand each job its share of the result (``split``), or the error."""
        try:
            shares = split(await asyncio.get_running_loop().run_in_executor(self._executor, call))
        except Exception as error:  # noqa: BLE001 - handed to every waiting request, which raises it
            shares = [error] * len(jobs)
        for job, share in zip(jobs, shares, strict=True):
            if job.result.done():  # the request was cancelled (its client went away)
                continue
            if isinstance(share, Exception):
                job.result.set_exception(share)
            else:
                job.result.set_result(share)


def _split(jobs: list[_Job], results: list[Explanation]) -> list[list[Explanation]]:
    """One batched result list -> each job's slice of it, in job order."""
    shares, start = [], 0
    for job in jobs:
        shares.append(results[start : start + len(job.names)])
        start += len(job.names)
    return shares
