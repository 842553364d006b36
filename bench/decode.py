"""Decoding throughput (not a test): files to network-ready slices, in the decoding
thread vs worker processes.

    .venv/bin/python bench/decode.py [--shared ../shared/data] [--n-files 1536]
        [--out bench/results/decode.json]

What ``covidct predict`` does before the network sees a slice (PNG/JPEG decoding and the default site
steps: annotation removal and the body crop), over real slices from ``../shared/data`` (UCSD test,
then SARS-CoV-2 blocks 9 and 8, repeated up to ``--n-files``), with ``decode_workers`` 0 (the one
decoding thread) and 1 .. the usable cores worker processes, each measured in one run on the same files:
the time to the first batch (worker processes start by importing covidct and torch) and the steady rate
after it. On a GPU this is what bounds end-to-end predict (``bench/gpu.py``: the network runs thousands
of slices a second).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from machine import machine_facts
from shared_datasets import sars_rows, ucsd_rows

from covidct.infer.stream import iter_slice_batches
from covidct.preprocess.transforms import Preprocessing

REPO = Path(__file__).resolve().parent.parent
BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--n-files", type=int, default=1536)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "decode.json")
    args = parser.parse_args()
    shared = args.shared.resolve()
    rows = [r for r in ucsd_rows(shared) if r["split"] == "test"] + [
        r for r in sars_rows(shared) if r["split"] in ("test", "val")
    ]
    unique = [Path(row["path"]) for row in rows]
    paths = (unique * (args.n_files // len(unique) + 1))[: args.n_files]
    preprocessing = Preprocessing(crop_field=True, remove_annotations=True)  # covidct train's defaults
    results = {
        "machine": machine_facts(),
        "n_files": len(paths),
        "batch_size": BATCH,
        "preprocessing": "224 px, annotation removal and body crop (the training defaults)",
        "runs": {},
    }
    for workers in range(len(os.sched_getaffinity(0)) + 1):
        start = time.perf_counter()
        first_batch_s, n_slices = None, 0
        for batch in iter_slice_batches(
            paths, preprocessing=preprocessing, batch_size=BATCH, decode_workers=workers
        ):
            first_batch_s = first_batch_s or time.perf_counter() - start
            n_slices += len(batch.paths)
        seconds = time.perf_counter() - start
        results["runs"][f"decode_workers={workers}"] = {
            "slices": n_slices,
            "seconds": round(seconds, 2),
            "first_batch_s": round(first_batch_s, 2),
            "slices_per_s": round(n_slices / seconds, 1),
            "steady_slices_per_s": round((n_slices - BATCH) / (seconds - first_batch_s), 1),
        }
        print(workers, results["runs"][f"decode_workers={workers}"], flush=True)
    base = results["runs"]["decode_workers=0"]["steady_slices_per_s"]
    results["steady_ratio_to_thread"] = {
        name: round(run["steady_slices_per_s"] / base, 2) for name, run in results["runs"].items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
