"""The server's settings: one pydantic-settings class, read once at start-up (env prefix ``COVIDCT_``)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from covidct.errors import OptionError
from covidct.infer.engine_kind import Engine
from covidct.io.budget import DEFAULT_REQUEST_VOXELS, DEFAULT_TOTAL_VOXELS
from covidct.model.device import Device

MIB = 1024 * 1024


class ServerSettings(BaseSettings):
    """What ``covidct serve`` runs and the limits it enforces on every request.

    Attributes:
        api_key: when set, every ``/api/v1`` request needs ``Authorization: Bearer <key>``.
        cors_origins: browser origins allowed to call the API from other pages; empty keeps CORS off.
        max_upload_bytes: the whole request body (413 over it), checked before and while it is read.
        max_files: files in one request (413 over it).
        max_pixels: width x height of one image or volume slice, read from its header before decoding,
            so a small compressed file cannot expand into gigabytes (a decompression bomb): 413 for a
            2-D image over it, 422 with the reader's reason for a DICOM or NIfTI slice.
        max_request_voxels: decoded voxels (pixels of every image and slice) one request may hold, counted
            from the headers before decoding: 413 naming the file that goes over it.
        max_total_voxels: decoded voxels every request in flight may hold together: 503 (retry later) over it.
        limit_concurrency: connections uvicorn serves at once; more get 503 before their body is read.
        body_timeout_s: seconds a client may take to send its upload; a slower one gets 408, so slow clients
            cannot each hold a connection and up to ``max_upload_bytes`` of memory for ever.
        allowed_hosts: Host header names accepted besides loopback ones when serving on loopback without an
            API key (a web page's DNS-rebinding request carries its own name, and is refused with 421).
        workers: inference threads; each runs one batch at a time.
        queue_size: requests waiting for a worker; one more gets 503 (retry later) instead of piling up.
        max_batch: slices of concurrent requests run together in one forward pass (micro-batching).
    """

    model_config = SettingsConfigDict(env_prefix="COVIDCT_")

    model_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    engine: Engine = Engine.TORCH
    device: Device = Device.AUTO
    cors_origins: list[str] = []
    max_upload_bytes: int = Field(64 * MIB, ge=1)
    max_files: int = Field(1024, ge=1)
    max_pixels: int = Field(4096 * 4096, ge=1)
    max_request_voxels: int = Field(DEFAULT_REQUEST_VOXELS, ge=1)
    max_total_voxels: int = Field(DEFAULT_TOTAL_VOXELS, ge=1)
    limit_concurrency: int = Field(64, ge=1)
    body_timeout_s: float = Field(60.0, gt=0)
    allowed_hosts: list[str] = []
    workers: int = Field(1, ge=1)
    queue_size: int = Field(64, ge=1)
    max_batch: int = Field(16, ge=1)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def has_api_key(settings: ServerSettings) -> bool:
    return bool(settings.api_key and settings.api_key.get_secret_value())


def check_exposure(settings: ServerSettings) -> None:
    """Refuse to serve beyond this machine without an API key.

    Raises:
        OptionError: ``host`` is not a loopback address and there is no API key.
    """
    if not is_loopback(settings.host) and not has_api_key(settings):
        raise OptionError(
            f"--host {settings.host} lets other machines connect, so it needs an API key: "
            "pass --api-key KEY or set COVIDCT_API_KEY (or keep the default --host 127.0.0.1)"
        )
