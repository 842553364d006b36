"""PACS round trip benchmark (not a test): ``pacs watch`` against a real Orthanc, on 150-slice CT series.

    PYTHONPATH=src .venv/bin/python bench/pacs.py --model DIR [--engine onnx-int8] [--shared ../shared/data]
        [--kills 20] [--out bench/results/pacs.json]

Series: the last 150 consecutive SARS-CoV-2 CT slices of a class (blocks 8-9, held out), resized to
512 x 512 and written as CT DICOM in HU through the lung window (int16, the size of a clinical series).
Orthanc (Debian's, with its DICOMweb plugin; the helper the tests use) runs on loopback ports with
a temporary storage folder. Measured:

- round trip: one new series, one ``watch`` cycle in process (model already loaded): QIDO-RS query,
  WADO-RS retrieve, predict (lung slices, guard, Grad-CAM of the top slice), STOW-RS of SR + capture;
- throughput: several new series in one cycle, in series per minute;
- kills: ``covidct pacs watch`` started as a process and SIGKILLed at a random point ``--kills``
  times while series are processed, then run to completion: results per series (must be exactly one
  SR and one capture) and any study seen with a partial result between kills.
Needs an ONNX export for the onnx engines (``covidct export DIR --format onnx --int8``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine_facts
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "pacs"))
from orthanc import PASSWORD, USER, start_orthanc, upload, why_orthanc_missing

from covidct import __version__, load_model
from covidct.pacs.auth import Credentials
from covidct.pacs.dicomweb import DicomWebPacs
from covidct.pacs.identity import ModelIdentity
from covidct.pacs.state import ProcessedSeries
from covidct.pacs.watch import WatchOptions, watch

LUNG_LEVEL, LUNG_WIDTH = -600.0, 1500.0
SIZE = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--engine", default="onnx-int8")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--round-trips", type=int, default=3)
    parser.add_argument("--throughput-series", type=int, default=4)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kill-series", type=int, default=8)
    parser.add_argument(
        "--kill-window-s",
        type=float,
        default=12.0,
        help="kill at a random point this long after a series arrives",
    )
    parser.add_argument(
        "--only-kills", action="store_true", help="measure the kills only, into the existing --out file"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pacs.json")
    args = parser.parse_args()
    reason = why_orthanc_missing()
    if reason:
        sys.exit(reason)
    scans = scan_slices(args.shared, args.slices)
    with tempfile.TemporaryDirectory(prefix="covidct-bench-pacs-") as folder:
        root = Path(folder)
        orthanc = start_orthanc(root / "orthanc")
        try:
            if args.only_kills:
                results = json.loads(args.out.read_text())
                results["kills"] = measure_kills(args, orthanc, scans, root)
                results["kills_machine"] = machine_facts(("torch", "onnxruntime", "covidct"))
            else:
                results = {
                    "series": f"{args.slices} slices of {SIZE}x{SIZE} int16 CT (SARS-CoV-2 blocks 8-9)",
                    "engine": args.engine,
                    "model": str(args.model),
                    **measure_in_process(args, orthanc, scans, root),
                    "kills": measure_kills(args, orthanc, scans, root) if args.kills else None,
                    "machine": machine_facts(
                        ("torch", "onnxruntime", "covidct", "highdicom", "pynetdicom", "dicomweb-client")
                    ),
                    "orthanc": "Debian orthanc 1.10 + orthanc-dicomweb, loopback, same machine",
                }
        finally:
            orthanc.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))


def measure_in_process(args, orthanc, scans, root: Path) -> dict:
    """Round trips of single series, then one cycle over several, with the model loaded once."""
    predictor = load_model(args.model, engine=args.engine)
    model = ModelIdentity.of(
        args.model, checkpoint_sha256=predictor.card.checkpoint_sha256, covidct_version=__version__
    )
    pacs = DicomWebPacs(orthanc.dicomweb_url, credentials=Credentials(user=USER, password=PASSWORD))
    state = ProcessedSeries(root / "in-process-state.json")
    stages = StageLog()
    round_trips, cpu_s = [], []
    for index in range(args.round_trips):
        upload(orthanc, write_series(root / f"rt{index}", scans[index % len(scans)]))
        started, cpu_started = time.perf_counter(), time.process_time()
        counts = watch(predictor, pacs, state, model, WatchOptions(once=True))
        round_trips.append(time.perf_counter() - started)
        cpu_s.append(time.process_time() - cpu_started)
        assert counts["done"] == 1, counts
    n = args.throughput_series
    for index in range(n):
        upload(orthanc, write_series(root / f"tp{index}", scans[index % len(scans)]))
    started = time.perf_counter()
    counts = watch(predictor, pacs, state, model, WatchOptions(once=True))
    elapsed = time.perf_counter() - started
    assert counts["done"] == n, counts
    return {
        "round_trip_s": [round(t, 2) for t in round_trips],
        "round_trip_median_s": round(statistics.median(round_trips), 2),
        # CPU seconds of the covidct process (all its threads) per round trip; Orthanc's work is not in it.
        "round_trip_cpu_s": [round(t, 2) for t in cpu_s],
        "load_average_during": os.getloadavg(),
        "predict_s_per_series": stages.predict_s,
        "throughput_series": n,
        "throughput_s": round(elapsed, 1),
        "series_per_minute": round(n / elapsed * 60, 2),
    }


class StageLog(logging.Handler):
    """Collects the 'predict X s' figure of each series' summary line."""

    def __init__(self) -> None:
        super().__init__()
        self.predict_s: list[float] = []
        logger = logging.getLogger("covidct.pacs")
        logger.addHandler(self)
        logger.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"\(predict ([0-9.]+) s\)", record.getMessage())
        if found:
            self.predict_s.append(float(found.group(1)))


def measure_kills(args, orthanc, scans, root: Path) -> dict:
    """SIGKILL ``pacs watch`` at random points while it works through new series, then let it finish."""
    studies = []
    for index in range(args.kill_series):
        files = write_series(root / f"kill{index}", scans[index % len(scans)][: max(40, args.slices // 3)])
        upload(orthanc, files)
        studies.append(study_uid(files[0]))
    (root / "auth").write_text(f"{USER}:{PASSWORD}\n")
    command = [
        str(Path(sys.executable).parent / "covidct"),
        "pacs",
        "watch",
        str(args.model),
        "--dicomweb",
        orthanc.dicomweb_url,
        "--basic-auth-file",
        str(root / "auth"),
        "--work-dir",
        str(root / "kill-work"),
        "--engine",
        args.engine,
        "--interval",
        "1",
    ]
    rng = random.Random(0)
    env = {**os.environ, "COLUMNS": "250"}
    partial_seen, kill_after_s, mid_series = 0, [], 0
    for attempt in range(args.kills):
        log = root / f"kill-{attempt}.log"
        with log.open("w") as stream:
            process = subprocess.Popen(command, stdout=stream, stderr=stream, env=env)
            in_hand = _wait_for(lambda log=log: "instances received" in log.read_text(), timeout_s=180)
            wait_s = rng.uniform(0.0, args.kill_window_s) if in_hand else 0.0
            time.sleep(wait_s)
            process.send_signal(signal.SIGKILL)
            process.wait()
        text = log.read_text()
        finished = text.count("Capture stored") + text.count("no result") + text.count("already in the PACS")
        mid_series += text.count("instances received") > finished
        kill_after_s.append(round(wait_s, 1))
        partial_seen += sum(1 for counts in result_counts(orthanc, studies) if counts["SR"] != counts["OT"])
        progress = {"kills_so_far": attempt + 1, "while_in_hand": mid_series, "partial_seen": partial_seen}
        print(json.dumps(progress), flush=True)  # so that a run cut short still says what it saw
    done_before_final = sum(1 for counts in result_counts(orthanc, studies) if counts["SR"])
    subprocess.run([*command, "--once"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    final = result_counts(orthanc, studies)
    return {
        "kills": args.kills,
        "kills_while_a_series_was_in_hand": mid_series,
        "kill_after_series_received_s": kill_after_s,
        "series": len(studies),
        "series_with_results_before_the_final_run": done_before_final,
        "results_per_series": [f"{c['SR']} SR + {c['OT']} SC" for c in final],
        "exactly_one_result_each": all(c == {"SR": 1, "OT": 1} for c in final),
        "partial_results_seen_between_kills": partial_seen,
    }


def _wait_for(condition, *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def result_counts(orthanc, studies: list[str]) -> list[dict[str, int]]:
    session = orthanc.rest()
    counts = []
    for uid in studies:
        found = session.post(
            f"{orthanc.url}/tools/find",
            json={"Level": "Instance", "Query": {"StudyInstanceUID": uid}, "Expand": True},
            timeout=30,
        ).json()
        modalities = [
            session.get(f"{orthanc.url}/instances/{i['ID']}/simplified-tags", timeout=30)
            .json()
            .get("Modality")
            for i in found
        ]
        counts.append({"SR": modalities.count("SR"), "OT": modalities.count("OT")})
    return counts


def scan_slices(shared: Path, n_slices: int) -> list[np.ndarray]:
    """The last ``n_slices`` consecutive SARS-CoV-2 slices of each class (blocks 8-9, held out from training).

    Returns (N, 512, 512) float32 gray in [0, 1] per class.
    """
    folder = shared / "sars_cov2_ct"
    with (folder / "metadata.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    scans = []
    for label in ("COVID", "non-COVID"):
        run = sorted((r for r in rows if r["label_name"] == label), key=lambda r: int(r["seq_index"]))[
            -n_slices:
        ]
        scans.append(np.stack([_gray(folder / r["rel_path"]) for r in run]))
    return scans


def _gray(path: Path) -> np.ndarray:
    image = Image.open(path).convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def write_series(folder: Path, gray: np.ndarray) -> list[Path]:
    """Write (N, H, W) gray slices as a CT series (new study), in HU through the lung window."""
    folder.mkdir(parents=True)
    hu = gray * LUNG_WIDTH + (LUNG_LEVEL - LUNG_WIDTH / 2)
    stored = np.clip(np.round(hu + 1024), 0, 4095).astype(np.int16)
    study, series, today = generate_uid(), generate_uid(), dt.date.today().strftime("%Y%m%d")
    paths = []
    for index, pixels in enumerate(stored):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.StudyDate = study, series, "CT", today
        ds.PatientName, ds.PatientID, ds.InstanceNumber = "Bench^Patient", "BENCH", index + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = (
            [0.0, 0.0, 2.5 * index],
            [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        )
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = SIZE, SIZE, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.PixelData = pixels.tobytes()
        paths.append(folder / f"IM{index:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def study_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


if __name__ == "__main__":
    main()
