"""``covidct audit`` through the real typer app: findings table, report files, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import write_csv
from typer.testing import CliRunner, Result

from covidct.cli.app import app

WIDE = {"COLUMNS": "250"}  # rich wraps at the terminal width; wide enough that a finding stays on one line


def invoke(*args) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args], env=WIDE)


def write_folder_dataset(root: Path, *, per_class: int = 4) -> Path:
    """COVID/ as RGBA PNGs and non-COVID/ as JPEGs (a format shortcut), plus one truncated file whose
    name looks like rich markup, so it must be printed literally."""
    rng = np.random.default_rng(0)
    for label, suffix, mode in (("COVID", ".png", "RGBA"), ("non-COVID", ".jpg", "L")):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            coarse = Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).resize(
                (64, 64), Image.Resampling.BICUBIC
            )
            coarse.convert(mode).save(root / label / f"{index}{suffix}")
    broken = root / "COVID" / "[bold]broken[red].png"
    broken.write_bytes((root / "COVID" / "0.png").read_bytes()[:100])
    return root


def test_audit_help_names_the_column_options():
    result = invoke("audit", "--help")

    assert result.exit_code == 0, result.output
    for option in ("--out", "--path-col", "--label-col", "--group-col", "--split-col", "--positive-class"):
        assert option in result.stdout


def test_audit_prints_findings_writes_the_report_and_exits_zero(tmp_path):
    data = write_folder_dataset(tmp_path / "data")

    result = invoke("audit", data, "--out", tmp_path / "report")

    assert result.exit_code == 0, result.output
    output = " ".join(result.stdout.split())
    assert (
        "file format (as Pillow reads the bytes) alone predicts COVID (out-of-fold AUC 1.00 >= 0.70)"
        in output
    )
    assert "COVID/[bold]broken[red].png: cannot decode image" in output
    assert f"Report: {tmp_path / 'report' / 'audit.html'} (data in audit.json)" in output
    saved = json.loads((tmp_path / "report" / "audit.json").read_text(encoding="utf-8"))
    assert {f["code"] for f in saved["findings"] if f["severity"] == "warning"} == {
        "shortcut",
        "unreadable",
        "missing_patient_ids",
    }


def test_audit_reads_csv_column_options(tmp_path):
    data = write_folder_dataset(tmp_path / "data")
    rows = [
        {
            "file": f"{label}/{index}{suffix}",
            "diagnosis": label,
            "pid": f"P{index}",
            "part": "train" if (index < 2) == (label == "COVID") else "test",
        }
        for label, suffix in (("COVID", ".png"), ("non-COVID", ".jpg"))
        for index in range(4)
    ]
    csv_path = write_csv(data / "table.csv", rows)

    result = invoke(
        "audit",
        csv_path,
        "--out",
        tmp_path / "report",
        "--path-col",
        "file",
        "--label-col",
        "diagnosis",
        "--group-col",
        "pid",
        "--split-col",
        "part",
    )

    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "report" / "audit.json").read_text(encoding="utf-8"))
    assert saved["split_source"] == "the manifest's splits"
    leak = [f["message"] for f in saved["findings"] if f["code"] == "patient_in_several_splits"]
    assert leak == [
        "4 patient(s) are in more than one split (e.g. P0 in train and test); "
        "fix the split column or drop --split-col to let covidct split by patient"
    ]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        pytest.param(lambda tmp: [tmp / "missing"], "missing: dataset not found", id="missing-data"),
        pytest.param(
            lambda tmp: [write_folder_dataset(tmp / "data"), "--out", _a_file(tmp)],
            "taken: --out exists and is not a folder; name a new or existing folder for the audit",
            id="out-is-a-file",
        ),
    ],
)
def test_audit_errors_are_one_line_and_exit_2(make_args, message, tmp_path):
    result = invoke("audit", *make_args(tmp_path))

    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert message in " ".join(result.output.split())


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "taken").write_text("")
    return tmp_path / "taken"
