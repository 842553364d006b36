"""The served model, settings and a TestClient on ``create_app``: one tiny model (64 px)
loaded once per session."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import uvicorn
from fastapi.testclient import TestClient

from covidct.infer.predictor import Predictor, load_model
from covidct.server.app import create_app
from covidct.server.settings import ServerSettings


@pytest.fixture(scope="session")
def predictor(onnx_model_dir) -> Predictor:
    return load_model(onnx_model_dir, device="cpu")


@pytest.fixture
def make_settings(onnx_model_dir) -> Callable[..., ServerSettings]:
    """Settings for the tiny model with ``overrides``; ``no_env`` clears COVIDCT_* variables."""

    def make(**overrides) -> ServerSettings:
        return ServerSettings(model_dir=onnx_model_dir, device="cpu", **overrides)

    return make


@pytest.fixture(autouse=True)
def no_env(monkeypatch) -> None:
    """Settings read COVIDCT_* variables: a developer's shell must not change what the tests see."""
    for name in [name for name in os.environ if name.startswith("COVIDCT_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def make_client(make_settings, predictor) -> Iterator[Callable[..., TestClient]]:
    """Start a TestClient (lifespan included) on ``create_app(make_settings(**overrides))`` serving ``served``
    (default: the session's predictor); closed after the test."""
    clients = []

    def make(*, served: Predictor | None = None, **overrides) -> TestClient:
        # A loopback Host, as a browser on this machine sends (TestClient's default, "testserver", gets 421).
        client = TestClient(
            create_app(make_settings(**overrides), predictor=served or predictor), base_url="http://127.0.0.1"
        )
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def ct_png(tiny_dataset) -> bytes:
    """A synthetic 64 x 64 chest CT slice as PNG bytes."""
    return tiny_dataset.paths["COVID"][0].read_bytes()


@pytest.fixture(scope="module")
def live_server(onnx_model_dir, predictor) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread (for the browser and
    schemathesis); yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings = ServerSettings(model_dir=onnx_model_dir, device="cpu", port=sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(settings, predictor=predictor), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    yield f"http://127.0.0.1:{settings.port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
