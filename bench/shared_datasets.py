"""Leak-free manifests of the two shared datasets (../shared/data), written as covidct CSV manifests.

Rules from ../shared/data/README.md: UCSD uses its patient-disjoint official split minus the 4 files that
sit in both classes; SARS-CoV-2 has no patient ids, so its 10 contiguous blocks per class are the groups
(blocks 0-7 train, 8 val, 9 test).
"""

from __future__ import annotations

import csv
from pathlib import Path

from covidct.data.dataset import DecodedSlices, decode_slices
from covidct.preprocess.transforms import Preprocessing

UCSD_CROSS_LABEL_DUPLICATES = {
    "CT_COVID/kjr-21-e24-p5-29.png",
    "CT_COVID/kjr-21-e24-p5-31.png",
    "CT_NonCOVID/71%0.jpg",
    "CT_NonCOVID/71%1.jpg",
}
SARS_SPLIT_OF_BLOCK = {**dict.fromkeys(range(8), "train"), 8: "val", 9: "test"}


def ucsd_rows(shared: Path) -> list[dict]:
    """UCSD-AI4H COVID-CT rows (absolute paths) with the official split and patient ids."""
    root = shared / "ucsd_covid_ct"
    rows = []
    for record in csv.DictReader((root / "metadata.csv").open(newline="", encoding="utf-8")):
        if record["rel_path"].removeprefix("images/") in UCSD_CROSS_LABEL_DUPLICATES:
            continue
        rows.append(
            {
                "path": str(root / record["rel_path"]),
                "label": record["label_name"],
                "patient_id": record["patient_id"],
                "split": record["official_split"],
                "source": "ucsd",
            }
        )
    return rows


def sars_rows(shared: Path) -> list[dict]:
    """SARS-CoV-2 CT-scan rows (absolute paths), grouped and split by contiguous block."""
    root = shared / "sars_cov2_ct"
    rows = []
    for record in csv.DictReader((root / "metadata.csv").open(newline="", encoding="utf-8")):
        block = int(record["contiguous_block10"])
        group = f"sars-{record['label_name']}-block{block}"
        rows.append(
            {
                "path": str(root / record["rel_path"]),
                "label": record["label_name"],
                "patient_id": group,
                "split": SARS_SPLIT_OF_BLOCK[block],
                "source": "sars",
            }
        )
    return rows


SOURCE_ROWS = {"ucsd": ucsd_rows, "sars": sars_rows}


def parse_model_spec(text: str) -> tuple[str, Path]:
    """``--model SOURCE=DIR`` as (source, model directory); a clear exit for anything else."""
    source, _, folder = text.partition("=")
    if source not in SOURCE_ROWS or not folder:
        raise SystemExit(f"--model must be SOURCE=DIR with SOURCE one of {sorted(SOURCE_ROWS)}; got {text!r}")
    return source, Path(folder)


def decode_validation(rows: list[dict], preprocessing: Preprocessing) -> tuple[list[dict], DecodedSlices]:
    """The validation rows of one source and their decoded slices; exits when any file fails to decode."""
    rows = [row for row in rows if row["split"] == "val"]
    decoded = decode_slices([Path(row["path"]) for row in rows], preprocessing)
    if decoded.failures:
        raise SystemExit(
            f"{len(decoded.failures)} validation files failed to decode, "
            f"e.g. {decoded.failures[0].path}: {decoded.failures[0].reason}"
        )
    return rows, decoded


def write_manifest(rows: list[dict], path: Path) -> Path:
    """Write rows as a covidct CSV manifest (path, label, patient_id, split, source)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "patient_id", "split", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return path
