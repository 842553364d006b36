"""Is bf16 autocast faster than fp32 on this CPU? (not a test; the evidence for ``supports_bf16``)

    .venv/bin/python bench/bf16.py [--rounds 3] [--out bench/results/bf16.json]

covidct's ResNet-50 (2-way head, random weights: speed does not depend on them) in the two precisions,
alternating so that drift of a shared machine hits both: a training step (batch 32 at 224 px,
channels_last, AdamW, as ``covidct train`` runs it) and an inference pass (64 slices through
``predict_logits`` with the batch norms folded, as ``covidct predict`` runs it). Records the medians,
their ratio, what torch reports about the CPU (oneDNN's "bf16 supported", which plain AVX-512 emulation
satisfies, and the AVX512-BF16 / AMX units) and what ``supports_bf16`` decided. One row per processor is
kept in the JSON (a rerun on the same processor replaces its row), so machines can be compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import machine_facts
from torch.nn import functional

from covidct.model.device import autocast
from covidct.model.forward import predict_logits, prepare_for_inference
from covidct.model.network import build_resnet50
from covidct.preprocess.transforms import Preprocessing

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed repetitions per precision and task")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bf16.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    seconds = {
        (task, precision): [] for task in ("train step", "inference") for precision in ("fp32", "bf16")
    }
    for _ in range(args.rounds):
        for precision in ("fp32", "bf16"):
            seconds["train step", precision].append(_train_step_seconds(precision == "bf16"))
            seconds["inference", precision].append(_inference_seconds(precision == "bf16"))
    medians = {
        f"{task}, {precision}": statistics.median(times) for (task, precision), times in seconds.items()
    }
    facts = machine_facts()
    row = {
        "machine": facts,
        "onednn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx_tile": torch.cpu._is_amx_tile_supported(),
        "supports_bf16": facts["bf16"],
        "median_seconds": medians,
        "bf16_over_fp32": {
            task: medians[f"{task}, bf16"] / medians[f"{task}, fp32"] for task in ("train step", "inference")
        },
        "all_seconds": {f"{task}, {precision}": times for (task, precision), times in seconds.items()},
    }
    rows = json.loads(args.out.read_text(encoding="utf-8"))["rows"] if args.out.exists() else []
    rows = [old for old in rows if old["machine"]["processor"] != facts["processor"]] + [row]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(
        json.dumps({key: row[key] for key in ("supports_bf16", "median_seconds", "bf16_over_fp32")}, indent=2)
    )
    print(f"wrote {args.out}")


def _train_step_seconds(use_bf16: bool, batch_size: int = 32) -> float:
    """One timed AdamW step (after an untimed one, which allocates the optimiser state)."""
    model = build_resnet50(num_classes=2).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch_size,))
    elapsed = 0.0
    for timed in (False, True):
        start = time.perf_counter()
        with autocast(CPU, use_bf16):
            loss = functional.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        elapsed = time.perf_counter() - start if timed else 0.0
    return elapsed


def _inference_seconds(use_bf16: bool, count: int = 64) -> float:
    """``predict_logits`` on ``count`` slices with the batch norms folded (after an untimed warm-up batch)."""
    model = prepare_for_inference(build_resnet50(num_classes=2), CPU)
    slices = torch.rand(count, 224, 224)
    preprocessing = Preprocessing()
    with torch.inference_mode():
        predict_logits(model, slices[:8], preprocessing=preprocessing, device=CPU, use_bf16=use_bf16)
        start = time.perf_counter()
        predict_logits(model, slices, preprocessing=preprocessing, device=CPU, use_bf16=use_bf16)
        return time.perf_counter() - start


if __name__ == "__main__":
    main()
