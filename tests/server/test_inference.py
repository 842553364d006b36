"""The inference pool: concurrent requests are batched, a full queue is refused, errors reach every caller."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from covidct.server.inference import InferencePool, ServerBusyError


class RecordingPredictor:
    """Stands in for ``Predictor``: records each ``predict_slices`` call; the first one
    waits for ``release``."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[list[str], bool]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def predict_slices(self, names, slices, *, explain=False):
        self.calls.append((list(names), explain))
        self.started.set()
        self.release.wait(timeout=10)
        if self.fail:
            raise RuntimeError("the network failed")
        return [f"{name}:{float(gray.mean()):.0f}" for name, gray in zip(names, slices, strict=True)]


def gray(value: float) -> np.ndarray:
    return np.full((4, 4), value, np.float32)


async def _while_first_call_blocks(predictor: RecordingPredictor, pool: InferencePool, requests):
    """Start ``requests`` (coroutine factories) once the first, separate request occupies the worker."""
    first = asyncio.create_task(pool.predict(["first"], [gray(0)]))
    await asyncio.to_thread(predictor.started.wait, 10)
    waiting = [asyncio.create_task(request()) for request in requests]
    await asyncio.sleep(0)  # let every waiting request reach the queue
    predictor.release.set()
    return await first, await asyncio.gather(*waiting, return_exceptions=True)


def test_waiting_requests_share_one_call_and_each_gets_its_own_results():
    predictor = RecordingPredictor()

    async def scenario():
        async with InferencePool(predictor, workers=1, queue_size=8, max_batch=16) as pool:
            requests = [lambda i=i: pool.predict([f"s{i}"], [gray(i)]) for i in range(1, 4)]
            requests.append(lambda: pool.predict(["study-a", "study-b"], [gray(7), gray(8)]))
            return await _while_first_call_blocks(predictor, pool, requests)

    first, results = asyncio.run(scenario())

    assert first == ["first:0"]
    assert results == [["s1:1"], ["s2:2"], ["s3:3"], ["study-a:7", "study-b:8"]]
    assert predictor.calls == [(["first"], False), (["s1", "s2", "s3", "study-a", "study-b"], False)]


def test_explained_and_plain_requests_run_as_separate_calls():
    predictor = RecordingPredictor()

    async def scenario():
        async with InferencePool(predictor, workers=1, queue_size=8, max_batch=16) as pool:
            requests = [
                lambda: pool.predict(["plain"], [gray(1)]),
                lambda: pool.predict(["cam"], [gray(2)], explain=True),
            ]
            return await _while_first_call_blocks(predictor, pool, requests)

    _, results = asyncio.run(scenario())

    assert results == [["plain:1"], ["cam:2"]]
    assert predictor.calls[1:] == [(["plain"], False), (["cam"], True)]


def test_a_batch_stops_growing_at_max_batch_slices():
    predictor = RecordingPredictor()

    async def scenario():
        async with InferencePool(predictor, workers=1, queue_size=8, max_batch=2) as pool:
            return await _while_first_call_blocks(
                predictor, pool, [lambda i=i: pool.predict([f"s{i}"], [gray(i)]) for i in range(3)]
            )

    asyncio.run(scenario())

    assert [names for names, _ in predictor.calls] == [["first"], ["s0", "s1"], ["s2"]]


def test_a_full_queue_refuses_at_once():
    predictor = RecordingPredictor()

    async def scenario():
        async with InferencePool(predictor, workers=1, queue_size=2, max_batch=16) as pool:
            return await _while_first_call_blocks(
                predictor, pool, [lambda i=i: pool.predict([f"s{i}"], [gray(i)]) for i in range(3)]
            )

    _, results = asyncio.run(scenario())

    assert results[:2] == [["s0:0"], ["s1:1"]]
    with pytest.raises(
        ServerBusyError, match=r"^the server is busy \(2 requests waiting\); retry in a few seconds$"
    ):
        raise results[2]


def test_an_error_reaches_every_request_of_the_batch():
    predictor = RecordingPredictor(fail=True)

    async def scenario():
        async with InferencePool(predictor, workers=1, queue_size=8, max_batch=16) as pool:
            task = asyncio.gather(
                pool.predict(["a"], [gray(1)]), pool.predict(["b"], [gray(2)]), return_exceptions=True
            )
            await asyncio.to_thread(predictor.started.wait, 10)
            predictor.release.set()
            return await task

    results = asyncio.run(scenario())

    assert [str(result) for result in results] == ["the network failed", "the network failed"]


def test_run_computes_other_work_in_the_pool():
    async def scenario():
        async with InferencePool(RecordingPredictor(), workers=1, queue_size=8, max_batch=16) as pool:
            return await pool.run(threading.current_thread)

    assert asyncio.run(scenario()).name.startswith("covidct-infer")
