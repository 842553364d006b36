"""``covidct pacs listen`` as a DICOM node of a real Orthanc: series pushed, results C-STOREd back."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from orthanc import free_port, start_orthanc, upload, why_orthanc_missing
from pacs_series import write_series
from readback import modality_counts

from covidct.pacs.node import DicomNode, ListenOptions, listen
from covidct.pacs.spool import Spool
from covidct.pacs.state import ProcessedSeries


@pytest.fixture
def node_and_orthanc(tmp_path):
    """Orthanc that knows this node as modality "covidct" (AE COVIDCT on a free loopback port)."""
    reason = why_orthanc_missing()
    if reason:
        pytest.skip(reason)
    port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"covidct": ("COVIDCT", port)})
    yield DicomNode("COVIDCT", "127.0.0.1", port), orthanc
    orthanc.stop()


def wait_for(condition, timeout_s: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def is_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_listen_receives_series_and_sends_results_to_the_destination(
    predictor, model_identity, node_and_orthanc, tmp_path
):
    node, orthanc = node_and_orthanc
    chest, mr = write_series(tmp_path / "chest", seed=1), write_series(tmp_path / "mr", modality="MR", seed=2)
    upload(orthanc, chest.files + mr.files)
    options = ListenOptions(
        local=node,
        destination=DicomNode(orthanc.aet, "127.0.0.1", orthanc.dicom_port),
        spool_dir=tmp_path / "spool",
        quiet_s=1.0,
        scan_interval_s=0.2,
    )
    state = ProcessedSeries(tmp_path / "state.json")
    stop, counts = threading.Event(), {}
    thread = threading.Thread(
        target=lambda: counts.update(listen(predictor, model_identity, state, options, stop=stop))
    )
    thread.start()
    try:
        assert wait_for(lambda: is_listening(node.port), timeout_s=30)
        rest = orthanc.rest()
        for study in rest.get(f"{orthanc.url}/studies", timeout=10).json():
            rest.post(
                f"{orthanc.url}/modalities/covidct/store",
                json={"Resources": [study], "Synchronous": True},
                timeout=60,
            ).raise_for_status()
        is_done = wait_for(lambda: state.counts()["done"] + state.counts()["skipped"] == 2)
    finally:
        stop.set()
        thread.join(timeout=60)

    assert is_done and counts == {"done": 1, "skipped": 1, "retry": 0}
    assert modality_counts(orthanc, chest.study_uid) == {"CT": 10, "SR": 1, "OT": 1}
    assert modality_counts(orthanc, mr.study_uid) == {"MR": 10}
    assert list(Spool(tmp_path / "spool").root.iterdir()) == []  # handled series leave the spool


def test_a_spooled_series_is_handled_after_a_restart(predictor, model_identity, node_and_orthanc, tmp_path):
    """Instances received before a crash are on disk: the next start handles their series."""
    node, orthanc = node_and_orthanc
    chest = write_series(tmp_path / "chest", seed=4)
    spool = Spool(tmp_path / "spool")
    for index, path in enumerate(chest.files):
        spool.add(chest.series_uid, f"1.2.3.{index}", path.read_bytes())
    options = ListenOptions(
        local=node,
        destination=DicomNode(orthanc.aet, "127.0.0.1", orthanc.dicom_port),
        spool_dir=tmp_path / "spool",
        quiet_s=0.0,
        scan_interval_s=0.2,
    )
    state, stop = ProcessedSeries(tmp_path / "state.json"), threading.Event()
    thread = threading.Thread(
        target=listen, args=(predictor, model_identity, state, options), kwargs={"stop": stop}
    )
    thread.start()
    try:
        is_done = wait_for(lambda: state.counts()["done"] == 1)
    finally:
        stop.set()
        thread.join(timeout=60)

    assert is_done and modality_counts(orthanc, chest.study_uid) == {"SR": 1, "OT": 1}
