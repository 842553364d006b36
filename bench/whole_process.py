"""Whole-process timings for ``bench/speed.py``: each row is a fresh process, startup and imports included.

What a user waits for at the terminal: ``covidct --help``, ``covidct predict`` on 1 file, on 512 files and
on one ~150-slice DICOM series, the plain eager-fp32 torchvision script (``bench/plain_script.py``) on the
same 512 files, and ``covidct serve`` from launch to a healthy ``/healthz``. The plain script and the
512-file rows run in turn, round after round (``run_interleaved``), and their ratios are also given round by
round. Wall seconds by ``time.perf_counter`` around the process, CPU seconds (user + system, the process and
the children it waited for) and peak resident memory (the largest of them) by GNU time's ``%U``, ``%S`` and
``%M`` or, for the server, its ``VmHWM`` just before it is stopped.
"""

from __future__ import annotations

import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

BENCH = Path(__file__).resolve().parent
GNU_TIME = Path("/usr/bin/time")
SERIES_SLICES = 150
SERIES_SIZE = 512


def covidct_command() -> list[str]:
    """The ``covidct`` console script of this interpreter's environment."""
    return [str(Path(sys.executable).parent / "covidct")]


def run_timed(command: list[str], *, repeats: int = 1) -> dict:
    """Run ``command`` ``repeats`` times (it must succeed): median wall and CPU (user + system) s, peak RSS.

    On a shared machine the wall time grows with everyone else's load; the CPU seconds much less so.
    """
    return _summary([_run_once(command) for _ in range(repeats)])


def run_interleaved(commands: dict[str, list[str]], *, rounds: int) -> dict[str, dict]:
    """``run_timed`` of each command, run in turn for ``rounds`` rounds (A B C, A B C, ...): a burst of
    someone else's load then slows one round of every row rather than every run of one row, so ratios
    between rows are taken within a round (``round_ratios``)."""
    runs: dict[str, list[tuple]] = {name: [] for name in commands}
    for index in range(rounds):
        for name, command in commands.items():
            print(f"  whole process: {name} (round {index + 1} of {rounds}) ...", flush=True)
            runs[name].append(_run_once(command))
    return {name: _summary(measured) for name, measured in runs.items()}


def round_ratios(reference: dict, entry: dict) -> list[float]:
    """``reference``'s wall seconds over ``entry``'s, round by round (rows from ``run_interleaved``)."""
    return [round(a / b, 2) for a, b in zip(reference["runs_s"], entry["runs_s"], strict=True)]


def _run_once(command: list[str]) -> tuple[float, float | None, float | None]:
    """(wall s, CPU s, peak RSS MiB) of one run of ``command``, which must succeed."""
    with tempfile.NamedTemporaryFile(suffix=".time") as report:
        wrapped = (
            [str(GNU_TIME), "-f", "%M %U %S", "-o", report.name, *command] if GNU_TIME.exists() else command
        )
        started = time.perf_counter()
        done = subprocess.run(wrapped, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(
                f"{' '.join(command[:4])} ... failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        fields = Path(report.name).read_text().split()[-3:] if GNU_TIME.exists() else [None] * 3
    peak = None if fields[0] is None else int(fields[0]) / 1024
    cpu = None if fields[1] is None else float(fields[1]) + float(fields[2])
    return seconds, cpu, peak


def _summary(runs: list[tuple[float, float | None, float | None]]) -> dict:
    seconds, cpu_seconds, peaks = zip(*runs, strict=True)
    return {
        "seconds": round(statistics.median(seconds), 3),
        "runs_s": [round(s, 3) for s in seconds],
        "cpu_seconds": None if None in cpu_seconds else round(statistics.median(cpu_seconds), 2),
        "peak_rss_mib": None if None in peaks else round(max(peaks), 1),
    }


def write_dicom_series(folder: Path, gray_paths: list[Path]) -> dict:
    """A CT series from consecutive real slices: lung-window gray back to HU, 512 x 512, JPEG-LS lossless.

    pydicom has no encoder for JPEG Lossless (process 14, what many scanners write); JPEG-LS lossless
    (pyjpegls) is the lossless codec it can write, decoded through the same plugin path at predict time.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

    from covidct.preprocess.window import LUNG_WINDOW

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    low = LUNG_WINDOW.level - LUNG_WINDOW.width / 2
    for k, path in enumerate(gray_paths):
        gray = (
            np.asarray(
                Image.open(path).convert("L").resize((SERIES_SIZE, SERIES_SIZE), Image.Resampling.BILINEAR),
                dtype=np.float32,
            )
            / 255
        )
        stored = np.round(gray * LUNG_WINDOW.width + low + 1024).astype(
            np.uint16
        )  # intercept -1024: stored >= 0
        dataset = Dataset()
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
        dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.SOPClassUID, dataset.SOPInstanceUID = (
            CTImageStorage,
            dataset.file_meta.MediaStorageSOPInstanceUID,
        )
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.Modality = study, series, "CT"
        dataset.Rows, dataset.Columns = stored.shape
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = (
            16,
            16,
            15,
            0,
        )
        dataset.RescaleSlope, dataset.RescaleIntercept = 1.0, -1024.0
        dataset.PixelSpacing, dataset.SliceThickness = [0.7, 0.7], 2.5
        dataset.InstanceNumber = k + 1
        dataset.ImagePositionPatient = [-180.0, -180.0, 2.5 * k]
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        dataset.PixelData = stored.tobytes()
        dataset.compress(JPEGLSLossless)
        dataset.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    size = sum(f.stat().st_size for f in folder.iterdir())
    return {
        "slices": len(gray_paths),
        "size_px": SERIES_SIZE,
        "transfer_syntax": "JPEG-LS Lossless (1.2.840.10008.1.2.4.80)",
        "mib_on_disk": round(size / 2**20, 1),
    }


def serve_cold_start(model_dir: Path, engine: str) -> dict:
    """Seconds from launching ``covidct serve`` to the first 200 from ``/healthz``; its peak RSS then."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [*covidct_command(), "serve", str(model_dir), "--engine", engine, "--port", str(port)]
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"covidct serve exited with {server.returncode} before /healthz answered")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        seconds = time.perf_counter() - started
        peak = _vm_hwm_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"seconds": round(seconds, 3), "peak_rss_mib": peak}


def _vm_hwm_mib(pid: int) -> float | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def test_probabilities(prob_csv: Path, rows: list[dict]) -> dict[str, float]:
    """prob_covid of the UCSD test rows of ``rows`` from a CSV with path and prob_covid columns; a file the
    out-of-distribution guard flagged has none and is not in the result."""
    test = {str(r["path"]) for r in rows if r["is_ucsd_test"]}
    with prob_csv.open(newline="", encoding="utf-8") as handle:
        return {
            r["path"]: float(r["prob_covid"])
            for r in csv.DictReader(handle)
            if r["path"] in test and r.get("prob_covid") not in (None, "")
        }


def add_test_aucs(table: dict, probabilities: dict[str, dict[str, float]], rows: list[dict]) -> None:
    """Each row's ROC-AUC over the UCSD test files that every row scored (the same files for all, so the
    differences are the engines'), and how many of them the row's guard flagged."""
    test = [r for r in rows if r["is_ucsd_test"]]
    common = [r for r in test if all(str(r["path"]) in prob for prob in probabilities.values())]
    for name, prob in probabilities.items():
        table[name]["auc_ucsd_test"] = round(
            float(roc_auc_score([r["is_covid"] for r in common], [prob[str(r["path"])] for r in common])), 4
        )
        table[name]["ucsd_test_scored"] = (
            f"{len(common)} of {len(test)} (flagged by this row: {len(test) - len(prob)})"
        )


def measure(
    model_dir: Path, rows: list[dict], workdir: Path, *, series_rows: list[Path], quick: bool = False
) -> dict:
    """Every whole-process row, in one run, so their ratios compare (the machine is shared and noisy)."""
    covidct = covidct_command()
    files = workdir / "files.txt"
    files.write_text("\n".join(str(r["path"]) for r in rows) + "\n", encoding="utf-8")
    paths = [str(r["path"]) for r in rows]
    series = workdir / "series"
    series_facts = write_dicom_series(series, series_rows)
    repeats = 1 if quick else 3
    result = {"n_files": len(paths), "series": series_facts, "rows": {}}
    table = result["rows"]

    def row(name: str, command: list[str], repeat: int = 1) -> dict:
        print(f"  whole process: {name} ...", flush=True)
        table[name] = run_timed(command, repeats=repeat)
        print(f"    {table[name]}", flush=True)
        return table[name]

    row("covidct --help", [*covidct, "--help"], repeat=repeats)
    row(
        "predict 1 file, onnx-int8",
        [*covidct, "predict", str(model_dir), paths[0], "--engine", "onnx-int8"],
        repeat=repeats,
    )
    plain_name = f"plain script, {len(paths)} files"
    outputs = {plain_name: workdir / "plain.csv"}
    commands = {
        plain_name: [
            sys.executable,
            str(BENCH / "plain_script.py"),
            str(model_dir),
            str(files),
            str(outputs[plain_name]),
        ]
    }
    for engine, workers in (("onnx-int8", None), ("onnx-int8", 2), *([] if quick else [("torch", None)])):
        name = f"predict {len(paths)} files, {engine}" + (
            "" if workers is None else f", --decode-workers {workers}"
        )
        outputs[name] = workdir / f"{engine}-{workers}.csv"
        options = [] if workers is None else ["--decode-workers", str(workers)]
        commands[name] = [
            *covidct,
            "predict",
            str(model_dir),
            *paths,
            "--engine",
            engine,
            *options,
            "--out",
            str(outputs[name]),
        ]
    for name, measured in run_interleaved(commands, rounds=repeats).items():
        table[name] = measured
        print(f"    {name}: {measured}", flush=True)
    probabilities = {name: test_probabilities(out, rows) for name, out in outputs.items()}
    row(
        f"predict one {series_facts['slices']}-slice DICOM series, onnx-int8",
        [*covidct, "predict", str(model_dir), str(series), "--engine", "onnx-int8"],
        repeat=repeats,
    )
    print("  whole process: serve cold start ...", flush=True)
    table["serve --engine onnx-int8: launch to healthy /healthz"] = serve_cold_start(model_dir, "onnx-int8")
    add_test_aucs(table, probabilities, rows)
    for name in commands.keys() - {plain_name}:
        entry = table[name]
        entry["speedup_vs_plain_script"] = round(table[plain_name]["seconds"] / entry["seconds"], 2)
        entry["speedup_by_round"] = round_ratios(table[plain_name], entry)
        entry["abs_delta_auc_vs_plain_fp32"] = round(
            abs(entry["auc_ucsd_test"] - table[plain_name]["auc_ucsd_test"]), 4
        )
    result["load_average_after"] = os.getloadavg()
    return result
