"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on free loopback ports, temporary storage.

Helpers, not fixtures, so the benchmark (``bench/pacs.py``) starts the same server the tests use.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

INSTALL = "apt-get install orthanc orthanc-dicomweb"
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
USER, PASSWORD = "covidct", "test-secret"


@dataclass
class Orthanc:
    """A running Orthanc: its REST and DICOMweb URLs, DICOM port and AE title, and the process."""

    http_port: int
    dicom_port: int
    aet: str
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self) -> requests.Session:
        session = requests.Session()
        session.auth = (USER, PASSWORD)
        return session

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def why_orthanc_missing() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else a reason with the install command."""
    if shutil.which("Orthanc") is None:
        return f"Orthanc is not installed ({INSTALL})"
    if dicomweb_plugin() is None:
        return f"the Orthanc DICOMweb plugin is not installed ({INSTALL})"
    return None


def dicomweb_plugin() -> str | None:
    return next((path for path in PLUGIN_CANDIDATES if Path(path).exists()), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_orthanc(folder: Path, *, modalities: dict[str, tuple[str, int]] | None = None) -> Orthanc:
    """Start Orthanc with storage in ``folder``, basic auth (``USER``/``PASSWORD``), DICOMweb, loopback only.

    ``modalities`` maps a name to (AE title, port) of DICOM nodes on 127.0.0.1 that Orthanc may send to.
    """
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "covidct-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {
            name: [aet, "127.0.0.1", port] for name, (aet, port) in (modalities or {}).items()
        },
        "DicomCheckCalledAet": False,
        "StableAge": 1,
        "ConcurrentJobs": 1,
        "HttpTimeout": 60,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log = (folder / "orthanc.log").open("w")
    process = subprocess.Popen(
        ["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
    )
    orthanc = Orthanc(http_port, dicom_port, "ORTHANC", process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}; see {folder / 'orthanc.log'}")
        try:
            if orthanc.rest().get(f"{orthanc.url}/system", timeout=2).ok:
                return orthanc
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    orthanc.stop()
    raise RuntimeError(f"Orthanc did not answer within 60 s; see {folder / 'orthanc.log'}")


def upload(orthanc: Orthanc, files: list[Path]) -> None:
    """Store DICOM files through Orthanc's REST API (``POST /instances``)."""
    session = orthanc.rest()
    for path in files:
        session.post(f"{orthanc.url}/instances", data=path.read_bytes(), timeout=30).raise_for_status()
