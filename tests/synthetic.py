"""Synthetic chest-CT slices and the tiny labelled datasets the tests train on (helpers, not fixtures)."""

from __future__ import annotations

import csv
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SLICE_PX = 64
CLASSES = ("COVID", "non-COVID")


@dataclass(frozen=True)
class SyntheticDataset:
    """A tiny labelled dataset on disk: ``root`` holds COVID/ and non-COVID/; ``csv`` is its manifest."""

    root: Path
    csv: Path
    paths: dict[str, list[Path]]


def synthetic_ct_slice(rng: np.random.Generator, *, is_covid: bool, size: int = SLICE_PX) -> np.ndarray:
    """Return a (size, size) uint8 axial "CT slice": dark background, body ellipse, two darker lungs.

    COVID slices get a few bright ground-glass blobs inside the lungs, a pattern a CNN can learn
    from a handful of examples; everything else (position, size, noise) varies in both classes.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.04, 0.04)
    image = np.full((size, size), 0.04, np.float32)
    body = ((xx - cx) / 0.44) ** 2 + ((yy - cy) / 0.36) ** 2 <= 1
    image[body] = 0.6
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        lx = cx + side * 0.19
        lungs |= ((xx - lx) / 0.14) ** 2 + ((yy - cy) / 0.25) ** 2 <= 1
    image[lungs] = 0.12
    if is_covid:
        for _ in range(int(rng.integers(3, 6))):
            side = rng.choice([-1, 1])
            bx, by = cx + side * 0.19 + rng.uniform(-0.06, 0.06), cy + rng.uniform(-0.15, 0.15)
            blob = ((xx - bx) ** 2 + (yy - by) ** 2) <= rng.uniform(0.04, 0.07) ** 2
            image[blob & lungs] = 0.45
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_synthetic_dataset(
    root: Path, *, patients_per_class: int, slices_per_patient: int, seed: int = 0
) -> SyntheticDataset:
    """Write PNG slices under ``root/<class>/`` and ``root/manifest.csv`` (path, label, patient_id, split).

    Patients are split 50% train, 25% val, 25% test within each class, so every split has both classes
    and no patient crosses splits.
    """
    rng = np.random.default_rng(seed)
    rows, paths = [], {name: [] for name in CLASSES}
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for patient in range(patients_per_class):
            split = (
                "train"
                if patient < patients_per_class // 2
                else "val"
                if patient < 3 * patients_per_class // 4
                else "test"
            )
            patient_id = f"{'C' if label == 'COVID' else 'N'}{patient:02d}"
            for index in range(slices_per_patient):
                path = root / label / f"{patient_id}_{index}.png"
                Image.fromarray(synthetic_ct_slice(rng, is_covid=label == "COVID"), mode="L").save(path)
                paths[label].append(path)
                rows.append(
                    {
                        "path": path.relative_to(root).as_posix(),
                        "label": label,
                        "patient_id": patient_id,
                        "split": split,
                    }
                )
    manifest = root / "manifest.csv"
    write_csv(manifest, rows)
    return SyntheticDataset(root, manifest, paths)


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts with the same keys) as a CSV with a header; return ``path``."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte 8-bit grayscale PNG whose header claims ``width`` x ``height`` pixels (its data holds one
    row): a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
