"""Load and fault benchmark of ``covidct serve`` on loopback (not a test): bad uploads under concurrency.

    .venv/bin/python bench/load.py [--model DIR] [--requests 500] [--clients 16] [--out bench/results/load.json]

Starts ``covidct serve`` in a subprocess on a free 127.0.0.1 port (``--model``, or a tiny 64 px model
trained first on the bundled demo slices with random start weights: the figures then measure the
server, not a ResNet-50 at 224 px), and fires ``--requests`` requests from ``--clients`` concurrent
httpx clients, mixing in a fixed, shuffled order: valid slices (real CT from the demo sample), a few
with ``?cam=true``, DICOM series (4 slices written in memory with pydicom), corrupted files (truncated
PNG, random bytes, text, a broken DICOM) and oversized uploads (over a 2 MiB upload limit, and a PNG
header claiming 30000 x 30000 pixels).

Records status counts per kind, 5xx, dropped connections, whether every bad upload got a 4xx with a
``detail`` message, p50/p95 latency of plain single-slice requests, and the server's RSS (VmRSS in
/proc) after the first 100 and after all requests. Targets: zero 5xx, zero dropped connections,
every bad upload a 4xx with a message, RSS growth under 10% between the first and the last 100 requests.
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
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import torch
from machine import machine_facts
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from safetensors.torch import save_file
from torchvision.models import resnet50

from covidct.data.manifest import read_manifest
from covidct.model.card import read_card
from covidct.model.pretrained import resolve_pretrained
from covidct.preprocess.lung_slices import select_lung_slices
from covidct.preprocess.window import LUNG_WINDOW
from covidct.train.config import TrainConfig
from covidct.train.trainer import fit

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "src" / "covidct" / "demo"
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
TARGET_RSS_GROWTH = 0.10
RSS_WINDOW = 100  # RSS is read after the first and after the last this many requests (a fifth of a shorter run)
# kind -> share of the requests; bad kinds must all get a 4xx
MIX = {"slice": 0.55, "slice_cam": 0.05, "dicom": 0.10, "truncated_png": 0.06, "random_bytes": 0.06, "text": 0.04, "broken_dicom": 0.04, "oversized": 0.06, "pixel_bomb": 0.04}
GOOD_KINDS = ("slice", "slice_cam", "dicom")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model directory (default: a tiny 64 px model trained first)")
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
    """64 px, one epoch on the demo manifest, random start weights: a fast model with the real card and guard."""
    print("training a tiny model on the demo slices ...", flush=True)
    torch.manual_seed(0)
    weights = workdir / "resnet50_random.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in resnet50(weights=None).state_dict().items()}, weights)
    config = TrainConfig(image_size=64, epochs=1, batch_size=16, device="cpu")
    return fit(read_manifest(DEMO / "manifest.csv"), workdir / "model", config, pretrained=resolve_pretrained(weights)).model_dir


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
    command = [str(Path(sys.executable).parent / "covidct"), "serve", str(model_dir), "--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"covidct serve exited with {server.returncode}: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError("covidct serve did not answer /healthz within 120 s")


def _body(kind: str, slices: list[Path], dicom_sources: list[Path], rng: random.Random) -> tuple[list[tuple[str, tuple[str, bytes, str]]], str]:
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
    else:  # pixel_bomb: a tiny PNG whose header claims 30000 x 30000 pixels
        files = [("bomb.png", _png_claiming(30_000, 30_000))]
    return [("files", (name, data, "application/octet-stream")) for name, data in files], "?cam=true" if kind == "slice_cam" else ""


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
        dataset = Dataset()
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
        dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.Modality = study, series, "CT"
        dataset.Rows, dataset.Columns = hu.shape
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 1
        dataset.RescaleSlope, dataset.RescaleIntercept = 1.0, 0.0
        dataset.PixelSpacing, dataset.SliceThickness = [0.7, 0.7], 2.5
        dataset.InstanceNumber, dataset.ImagePositionPatient = k + 1, [0.0, 0.0, 2.5 * k]
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        dataset.PixelData = np.round(hu).astype(np.int16).tobytes()
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files.append((f"IM{k:04d}.dcm", buffer.getvalue()))
    return files


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _fire(url: str, plan: list[str], slices: list[Path], n_clients: int, pid: int) -> dict:
    """Send ``plan`` from ``n_clients`` concurrent clients; one record per request, and RSS after the first window and at the end."""
    rng = random.Random(1)
    # A PNG's gray levels are not HU: only slices that still show lung after the mapping make a valid series.
    dicom_sources = [png for png in slices if select_lung_slices(_slice_hu(png)[None])[0]]
    bodies = [_body(kind, slices, dicom_sources, rng) for kind in plan]  # made up front so client-side work is not timed
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
                    records[index] = {"kind": plan[index], "status": response.status_code, "detail": detail, "seconds": time.perf_counter() - start}
                except httpx.TransportError as error:
                    records[index] = {"kind": plan[index], "status": None, "error": type(error).__name__, "seconds": time.perf_counter() - start}
                done += 1
                if done == window:
                    rss["after_first_window"] = _rss_mb(pid)

    rss["before"] = _rss_mb(pid)
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(n_clients)))
    wall = time.perf_counter() - started
    rss["after_all"] = _rss_mb(pid)
    return {"records": records, "rss_mb": rss, "rss_window": window, "wall_s": wall}


def _report(results: dict, plan: list[str], args: argparse.Namespace, model_dir: Path) -> dict:
    records = results["records"]
    by_kind = {kind: dict(Counter(str(r["status"]) for r in records if r["kind"] == kind)) for kind in MIX}
    server_errors = [r for r in records if r["status"] is not None and r["status"] >= 500]
    dropped = [r for r in records if r["status"] is None]
    bad = [r for r in records if r["kind"] not in GOOD_KINDS]
    bad_answered = [r for r in bad if r["status"] is not None and 400 <= r["status"] < 500 and r.get("detail")]
    good_failed = [r for r in records if r["kind"] in GOOD_KINDS and r["status"] != 200]
    latencies = sorted(r["seconds"] for r in records if r["kind"] == "slice" and r["status"] == 200)
    rss = results["rss_mb"]
    growth = (rss["after_all"] - rss["after_first_window"]) / rss["after_first_window"]
    card = read_card(model_dir)
    return {
        "machine": machine_facts(("torch", "torchvision", "fastapi", "uvicorn", "httpx", "covidct")),
        "model": {"dir": str(model_dir), "image_size": card.preprocessing.image_size, "has_ood_guard": card.ood is not None, "tiny_trained_for_bench": args.model is None},
        "setup": {"requests": len(plan), "clients": args.clients, "mix": MIX, "max_upload_bytes": MAX_UPLOAD_BYTES, "server": "covidct serve on 127.0.0.1, default workers and queue"},
        "status_by_kind": by_kind,
        "wall_s": round(results["wall_s"], 2),
        "requests_per_s": round(len(plan) / results["wall_s"], 1),
        "single_slice_latency_s": {"n": len(latencies), "p50": round(statistics.median(latencies), 4), "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 4)},
        "rss_mb": {key: round(value, 1) for key, value in rss.items()} | {"window_requests": results["rss_window"], "growth_first_to_last_window": round(growth, 4)},
        "bad_upload_examples": {r["kind"]: f"{r['status']} {r['detail']}" for r in bad if r.get("detail")},
        "valid_upload_failures": [f"{r['kind']}: {r['status']} {r.get('detail') or r.get('error')}" for r in good_failed],
        "targets": {
            "zero_5xx": {"value": len(server_errors), "met": not server_errors},
            "zero_dropped_connections": {"value": len(dropped), "met": not dropped},
            "every_bad_upload_4xx_with_message": {"value": f"{len(bad_answered)}/{len(bad)}", "met": len(bad_answered) == len(bad)},
            "every_valid_upload_200": {"value": f"{len(records) - len(bad) - len(good_failed)}/{len(records) - len(bad)}", "met": not good_failed},
            "rss_growth_under_10pct": {"value": round(growth, 4), "met": growth < TARGET_RSS_GROWTH},
        },
    }


if __name__ == "__main__":
    main()
