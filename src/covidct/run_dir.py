"""Output folders of ``train --out`` and ``evaluate --out``: covidct writes into a folder only when it is
empty, new, or a covidct run of the same kind (or the user said ``--overwrite``), and
deletes only files it wrote.

A run is marked by ``.covidct-run.json`` (its kind), written when the folder is claimed. Without the
marker a non-empty folder may be anyone's: a model the user wants to keep, or a data folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from covidct.errors import OptionError

RUN_FILE = ".covidct-run.json"


def claim_run_dir(out_dir: Path, kind: str, *, overwrite: bool = False) -> None:
    """Create ``out_dir`` or check that covidct may write a ``kind`` run ("train",
    "evaluate") into it, and mark it.

    Raises:
        OptionError: ``out_dir`` is a file, or a non-empty folder that is not a covidct ``kind`` run and
            ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"--out must be a folder; '{out_dir}' is a file")
    found = run_kind(out_dir)
    if found != kind and not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        what = f"a covidct {found} run" if found else "files covidct did not write"
        example = next(name for name in sorted(p.name for p in out_dir.iterdir()) if name != RUN_FILE)
        raise OptionError(
            f"--out {out_dir} holds {what} (e.g. {example}); choose "
            "a new or empty folder, or pass --overwrite to write "
            f"the {kind} files into it (covidct replaces only files "
            "of the names it writes, and deletes none of the others)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if found != kind:
        (out_dir / RUN_FILE).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")


def run_kind(out_dir: Path) -> str | None:
    """The kind of covidct run ``out_dir`` holds, or None (no marker, or an unreadable one)."""
    try:
        return json.loads((Path(out_dir) / RUN_FILE).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
