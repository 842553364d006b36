"""Load and fault benchmark of ``covidct serve`` on loopback (not a test): bad uploads under concurrency.

    .venv/bin/python bench/load.py [--model DIR] [--requests 500] [--clients 16]
        [--out bench/results/load.json]

Starts ``covidct serve`` in a subprocess on a free 127.0.0.1 port (``--model``, or a tiny 64 px model
trained first on the bundled demo slices with random start weights: the figures then measure the
server, not a ResNet-50 at 224 px), and fires ``--requests`` requests from ``--clients`` concurrent
httpx clients, mixing in a fixed, shuffled order: valid slices (real CT from the demo sample), a few
with ``?cam=true``, DICOM series (4 slices written in memory with pydicom), corrupted files (truncated
PNG, random bytes, text, a broken DICOM), oversized uploads (over a 2 MiB upload limit, and a PNG
header claiming 30000 x 30000 pixels) and the hostile uploads of issue 15: 16 black 4096 x 4096 PNGs in
one request (1 GiB decoded, over the voxel budget), a Deflated DICOM bomb (96 MiB inflated), a 512^3
black .nii.gz (127 KiB, 512 MiB decoded: within the budget, then refused as not HU), a float TIFF with
NaN pixels, PostScript named scan.png, and a NIfTI with zero slices.

Records status counts per kind, 5xx, dropped connections, whether every bad upload got a 4xx with a
``detail`` message, p50/p95 latency of plain single-slice requests, and the server's RSS (VmRSS in
/proc) after the first 100 and after all requests, and its peak RSS (VmHWM). Targets: zero 5xx (503 for
a busy server aside), zero dropped connections, every bad upload a 4xx with a message, RSS growth under 10%
between the first and the last 100 requests, peak RSS under the start RSS plus the server's decoded-voxel
budget in total (4 bytes a voxel) plus 1 GiB for everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import torch
from machine import machine_facts
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from safetensors.torch import save_file
from torchvision.models import resnet50

from covidct.data.manifest import read_manifest
from covidct.io.budget import DEFAULT_TOTAL_VOXELS
from covidct.model.card import read_card
from covidct.model.pretrained import resolve_pretrained
from covidct.preprocess.lung_slices import select_lung_slices
from covidct.preprocess.window import LUNG_WINDOW
from covidct.train.config import TrainConfig
from covidct.train.trainer import fit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from synthetic import png_claiming  # the decompression bomb the tests send

DEMO = REPO / "src" / "covidct" / "demo"
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
TARGET_RSS_GROWTH = 0.10
RSS_WINDOW = (
    100  # RSS is read after the first and after the last this many requests (a fifth of a shorter run)
)
# kind -> share of the requests; bad kinds must all get a 4xx
MIX = {
    "slice": 0.43,
    "slice_cam": 0.05,
    "dicom": 0.10,
    "truncated_png": 0.06,
    "random_bytes": 0.06,
    "text": 0.04,
    "broken_dicom": 0.04,
    "oversized": 0.06,
    "pixel_bomb": 0.04,
    # hostile uploads (issue 15)
    "black_pngs": 0.02,
    "deflate_bomb": 0.02,
    "nifti_bomb": 0.02,
    "nan_tiff": 0.02,
    "postscript": 0.02,
    "empty_nifti": 0.02,
}
PEAK_ALLOWANCE_MB = 1024 + DEFAULT_TOTAL_VOXELS * 4 / 2**20
GOOD_KINDS = ("slice", "slice_cam", "dicom")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="a model directory (default: a tiny 64 px model trained first)"
    )
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "load.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="covidct-load-"))
    model_dir = args.model or _tiny_model(workdir)
    slices = sorted(DEMO.glob("images/*/*.png"))
    plan = _plan(args.requests, random.Random(0))
    port = _free_port()
    server = _start_server(model_dir, port)
    try:
        results = asyncio.run(_fire(f"http://127.0.0.1:{port}", plan, slices, args.clients, server.pid))
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = _report(results, plan, args, model_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["targets"], indent=2))


def _tiny_model(workdir: Path) -> Path:
    """64 px, one epoch on the demo manifest, random start weights: a fast model with
    the real card and guard."""
    print("training a tiny model on the demo slices ...", flush=True)
    torch.manual_seed(0)
    weights = workdir / "resnet50_random.safetensors"
    save_file(
        {name: tensor.contiguous() for name, tensor in resnet50(weights=None).state_dict().items()}, weights
    )
    config = TrainConfig(image_size=64, epochs=1, batch_size=16, device="cpu")
    return fit(
        read_manifest(DEMO / "manifest.csv"),
        workdir / "model",
        config,
        pretrained=resolve_pretrained(weights),
    ).model_dir


def _plan(n: int, rng: random.Random) -> list[str]:
    kinds = [kind for kind, share in MIX.items() for _ in range(round(share * n))]
    kinds = (kinds + ["slice"] * n)[:n]
    rng.shuffle(kinds)
    return kinds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(model_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "COVIDCT_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}
    command = [
        str(Path(sys.executable).parent / "covidct"),
        "serve",
        str(model_dir),
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"covidct serve exited with {server.returncode}: {server.stderr.read().decode()[-2000:]}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError("covidct serve did not answer /healthz within 120 s")


def _body(
    kind: str,
    slices: list[Path],
    dicom_sources: list[Path],
    hostile: dict[str, list[tuple[str, bytes]]],
    rng: random.Random,
) -> tuple[list[tuple[str, tuple[str, bytes, str]]], str]:
    """The multipart files and query string for one request of ``kind``."""
    png = rng.choice(slices)
    if kind in ("slice", "slice_cam"):
        files = [(png.name, png.read_bytes())]
    elif kind == "dicom":
        files = _dicom_series(rng.choice(dicom_sources), n_slices=4)
    elif kind == "truncated_png":
        data = png.read_bytes()
        files = [("cut.png", data[: len(data) // 3])]
    elif kind == "random_bytes":
        files = [("noise.png", rng.randbytes(4096))]
    elif kind == "text":
        files = [("notes.txt", b"referral letter, not an image\n" * 20)]
    elif kind == "broken_dicom":
        files = [("scan.dcm", b"\0" * 128 + b"DICM" + rng.randbytes(512))]
    elif kind == "oversized":
        files = [("huge.png", b"\x89PNG\r\n\x1a\n" + rng.randbytes(MAX_UPLOAD_BYTES + 1024))]
    elif kind == "pixel_bomb":  # a tiny PNG whose header claims 30000 x 30000 pixels
        files = [("bomb.png", png_claiming(30_000, 30_000))]
    else:
        files = hostile[kind]
    return [
        ("files", (name, data, "application/octet-stream")) for name, data in files
    ], "?cam=true" if kind == "slice_cam" else ""


def _hostile_uploads() -> dict[str, list[tuple[str, bytes]]]:
    """The uploads issue 15 measured against a running server, made once."""
    black = io.BytesIO()
    Image.new("L", (4096, 4096)).save(black, format="PNG")
    nan_pixels = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    nan_pixels[:8] = np.nan
    nan_tiff = io.BytesIO()
    Image.fromarray(nan_pixels, mode="F").save(nan_tiff, format="TIFF")
    postscript = (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 "
        b"0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n"
    )
    return {
        "black_pngs": [(f"black{i:02d}.png", black.getvalue()) for i in range(16)],
        "deflate_bomb": [("bomb.dcm", _deflated_bomb())],
        "nifti_bomb": [("black.nii.gz", _nifti_bytes(np.zeros((512, 512, 512), np.uint8)))],
        "nan_tiff": [("nan.tif", nan_tiff.getvalue())],
        "postscript": [("scan.png", postscript)],
        "empty_nifti": [("empty.nii.gz", _nifti_bytes(np.zeros((64, 64, 0), np.int16)))],
    }


def _nifti_bytes(data: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "volume.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        return path.read_bytes()


def _deflated_bomb() -> bytes:
    """A Deflated Explicit VR CT file of 3 black 4096 x 4096 16-bit frames: 96 MiB
    inflated, about 100 KB sent."""
    dataset = _ct_slice(np.zeros((4096, 4096), np.int16), generate_uid(), generate_uid(), 0)
    dataset.NumberOfFrames = 3
    dataset.PixelData = bytes(3 * 4096 * 4096 * 2)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _slice_hu(png: Path) -> np.ndarray:
    """(H, W) float32 HU: the slice's gray levels mapped back through the lung window."""
    gray = np.asarray(Image.open(png).convert("L"), dtype=np.float32) / 255.0
    return gray * LUNG_WINDOW.width + (LUNG_WINDOW.level - LUNG_WINDOW.width / 2)


def _dicom_series(png: Path, *, n_slices: int) -> list[tuple[str, bytes]]:
    """A CT series in memory: the slice in HU (``_slice_hu``), repeated along z."""
    hu = _slice_hu(png)
    study, series = generate_uid(), generate_uid()
    files = []
    for k in range(n_slices):
        buffer = io.BytesIO()
        _ct_slice(np.round(hu).astype(np.int16), study, series, k).save_as(buffer, enforce_file_format=True)
        files.append((f"IM{k:04d}.dcm", buffer.getvalue()))
    return files


def _ct_slice(stored: np.ndarray, study: str, series: str, k: int) -> Dataset:
    """Slice ``k`` of a CT series: (H, W) int16 ``stored`` values in HU."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.Modality = study, series, "CT"
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 1
    dataset.RescaleSlope, dataset.RescaleIntercept = 1.0, 0.0
    dataset.PixelSpacing, dataset.SliceThickness = [0.7, 0.7], 2.5
    dataset.InstanceNumber, dataset.ImagePositionPatient = k + 1, [0.0, 0.0, 2.5 * k]
    dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    dataset.PixelData = stored.tobytes()
    return dataset


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The process's resident memory (VmRSS), or its peak so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


async def _fire(url: str, plan: list[str], slices: list[Path], n_clients: int, pid: int) -> dict:
    """Send ``plan`` from ``n_clients`` concurrent clients; one record per request, and RSS after the first
    window and at the end."""
    rng = random.Random(1)
    # A PNG's gray levels are not HU: only slices that still show lung after the mapping make a valid series.
    dicom_sources = [png for png in slices if select_lung_slices(_slice_hu(png)[None])[0]]
    hostile = _hostile_uploads()
    bodies = [
        _body(kind, slices, dicom_sources, hostile, rng) for kind in plan
    ]  # made up front so client-side work is not timed
    records: list[dict | None] = [None] * len(plan)
    next_index, done, rss = 0, 0, {}
    window = min(RSS_WINDOW, len(plan) // 5)

    async def client() -> None:
        nonlocal next_index, done
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while next_index < len(plan):
                index, next_index = next_index, next_index + 1
                files, query = bodies[index]
                start = time.perf_counter()
                try:
                    response = await http.post(f"/api/v1/predict{query}", files=files)
                    detail = response.json().get("detail") if response.status_code >= 400 else None
                    records[index] = {
                        "kind": plan[index],
                        "status": response.status_code,
                        "detail": detail,
                        "seconds": time.perf_counter() - start,
                    }
                except httpx.TransportError as error:
                    records[index] = {
                        "kind": plan[index],
                        "status": None,
                        "error": type(error).__name__,
                        "seconds": time.perf_counter() - start,
                    }
                done += 1
                if done == window:
                    rss["after_first_window"] = _rss_mb(pid)

    rss["before"] = _rss_mb(pid)
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(n_clients)))
    wall = time.perf_counter() - started
    rss["after_all"] = _rss_mb(pid)
    rss["peak"] = _rss_mb(pid, "VmHWM")
    return {"records": records, "rss_mb": rss, "rss_window": window, "wall_s": wall}


def _report(results: dict, plan: list[str], args: argparse.Namespace, model_dir: Path) -> dict:
    records = results["records"]
    by_kind = {kind: dict(Counter(str(r["status"]) for r in records if r["kind"] == kind)) for kind in MIX}
    server_errors = [
        r for r in records if r["status"] is not None and r["status"] >= 500 and r["status"] != 503
    ]
    busy = [r for r in records if r["status"] == 503]
    dropped = [r for r in records if r["status"] is None]
    bad = [r for r in records if r["kind"] not in GOOD_KINDS]
    bad_answered = [
        r
        for r in bad
        if r["status"] is not None and (400 <= r["status"] < 500 or r["status"] == 503) and r.get("detail")
    ]
    good_failed = [r for r in records if r["kind"] in GOOD_KINDS and r["status"] != 200]
    latencies = sorted(r["seconds"] for r in records if r["kind"] == "slice" and r["status"] == 200)
    rss = results["rss_mb"]
    growth = (rss["after_all"] - rss["after_first_window"]) / rss["after_first_window"]
    peak_limit = rss["before"] + PEAK_ALLOWANCE_MB
    card = read_card(model_dir)
    return {
        "machine": machine_facts(("torch", "torchvision", "fastapi", "uvicorn", "httpx", "covidct")),
        "model": {
            "dir": str(model_dir),
            "image_size": card.preprocessing.image_size,
            "has_ood_guard": card.ood is not None,
            "tiny_trained_for_bench": args.model is None,
        },
        "setup": {
            "requests": len(plan),
            "clients": args.clients,
            "mix": MIX,
            "max_upload_bytes": MAX_UPLOAD_BYTES,
            "server": "covidct serve on 127.0.0.1, default workers and queue",
        },
        "status_by_kind": by_kind,
        "wall_s": round(results["wall_s"], 2),
        "requests_per_s": round(len(plan) / results["wall_s"], 1),
        "single_slice_latency_s": {
            "n": len(latencies),
            "p50": round(statistics.median(latencies), 4),
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 4),
        },
        "rss_mb": {key: round(value, 1) for key, value in rss.items()}
        | {"window_requests": results["rss_window"], "growth_first_to_last_window": round(growth, 4)},
        "bad_upload_examples": {r["kind"]: f"{r['status']} {r['detail']}" for r in bad if r.get("detail")},
        "busy_503": {"n": len(busy), "kinds": dict(Counter(r["kind"] for r in busy))},
        "valid_upload_failures": [
            f"{r['kind']}: {r['status']} {r.get('detail') or r.get('error')}" for r in good_failed
        ],
        "targets": {
            "zero_5xx": {"value": len(server_errors), "met": not server_errors},
            "zero_dropped_connections": {"value": len(dropped), "met": not dropped},
            "every_bad_upload_4xx_with_message": {
                "value": f"{len(bad_answered)}/{len(bad)}",
                "met": len(bad_answered) == len(bad),
            },
            "every_valid_upload_200": {
                "value": f"{len(records) - len(bad) - len(good_failed)}/{len(records) - len(bad)}",
                "met": not good_failed,
            },
            "rss_growth_under_10pct": {"value": round(growth, 4), "met": growth < TARGET_RSS_GROWTH},
            "peak_rss_within_budget": {
                "value": round(rss["peak"], 1),
                "limit": round(peak_limit, 1),
                "met": rss["peak"] < peak_limit,
            },
        },
    }


if __name__ == "__main__":
    main()
