"""Inference speed benchmark on real CT slices (not a test): a plain torchvision script vs covidct's engines.

    .venv/bin/python bench/speed.py --model runs/ucsd [--shared ../shared/data]
        [--out bench/results/speed.json]

Side by side in one run, on the same slices (the UCSD official test split, then SARS-CoV-2 block 9, then
block 8 if those two hold fewer than ``--n-slices``): the baseline (torchvision ResNet-50 with the model's
weights, eager fp32, NCHW, ``torch.no_grad``, batch 32: what a typical script does), covidct's torch
engine (bf16 autocast and channels_last where supported), the same in fp32, ONNX fp32 and ONNX int8.
Each runs in its own subprocess so its peak RSS is its own. Records throughput at batch 32 (decoded
slices in memory, and files to probabilities end to end), p50 latency at batch 1, peak RSS, ROC-AUC on
the UCSD test split, each engine's ratio to the baseline, |delta AUC| and per-slice agreement (prob_covid,
label at the card's threshold, out-of-distribution flag) against covidct's torch fp32 path, and the machine.
covidct's engines include what the model card prescribes (mirror-image TTA, the out-of-distribution guard's
features and scores); the baseline does not: the ratios are the cost or gain of the whole covidct path. Each
covidct engine is measured a second time with TTA off (names ending in ``-1pass``: one forward pass per slice,
as a model trained with ``--no-tta`` runs), compared for AUC with torch fp32 at the same setting. Missing ONNX
exports are made first (``covidct export``'s defaults).

Then the same run times whole processes, startup included, as a user meets them (``bench/whole_process.py``:
``covidct --help``, predict on 1 file, on the same slices' files and on one ~150-slice DICOM series, the plain
eager-fp32 script ``bench/plain_script.py`` on those files, ``covidct serve`` to a healthy ``/healthz``).
``--rows in-process`` or ``--rows whole-process`` runs one kind only.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from machine import machine_facts
from safetensors.torch import load_file
from shared_datasets import sars_rows, ucsd_rows
from sklearn.metrics import roc_auc_score
from whole_process import SERIES_SLICES
from whole_process import measure as measure_whole_processes

from covidct import Predictor, load_model
from covidct.data.dataset import decode_slices
from covidct.data.manifest import read_manifest
from covidct.export.calibration import DEFAULT_CALIBRATION_SLICES
from covidct.export.onnx import export_onnx
from covidct.infer.engine_kind import Engine
from covidct.infer.torch_engine import TorchEngine
from covidct.model.card import read_card
from covidct.model.checkpoint import WEIGHTS_FILE
from covidct.model.network import build_resnet50
from covidct.preprocess.transforms import Preprocessing, normalize

REPO = Path(__file__).resolve().parent.parent
BATCH = 32
COVIDCT_ENGINES = ("torch", "torch-fp32", "onnx", "onnx-int8")
SINGLE_PASS = (
    "-1pass"  # the same engine with the card's mirror-image TTA turned off: one forward pass per slice
)
ENGINES = ("baseline", *COVIDCT_ENGINES, *(name + SINGLE_PASS for name in COVIDCT_ENGINES))
AUC_REFERENCE = "torch-fp32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="a model directory written by 'covidct train'"
    )
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "speed.json")
    parser.add_argument("--n-slices", type=int, default=512)
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="data for the int8 export if model.int8.onnx is missing (default: the card's training data)",
    )
    parser.add_argument("--rows", choices=("all", "in-process", "whole-process"), default="all")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one timed pass and 5 latency calls: a smoke run, not a measurement",
    )
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--slices", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _run_worker(args)
        return
    workdir = Path(tempfile.mkdtemp(prefix="covidct-speed-"))
    slices, composition = _select_slices(args.shared, args.n_slices)
    (workdir / "slices.json").write_text(json.dumps(slices), encoding="utf-8")
    exports = _ensure_exports(args.model, args.calibration, quick=args.quick)
    engines = {}
    for engine in ENGINES if args.rows != "whole-process" else ():
        print(f"measuring {engine} ...", flush=True)
        engines[engine] = _measure_in_subprocess(engine, args, workdir)
    whole = None
    if args.rows != "in-process":
        series = _series_slices(args.shared)
        whole = measure_whole_processes(args.model, slices, workdir, series_rows=series, quick=args.quick)
    card = read_card(args.model)
    results = {
        "machine": machine_facts(("torch", "torchvision", "onnxruntime", "onnx", "covidct")),
        "model": {
            "dir": str(args.model),
            "image_size": card.preprocessing.image_size,
            "tta_hflip": card.decision.tta_hflip,
            "has_ood_guard": card.ood is not None,
            "checkpoint_sha256": card.checkpoint_sha256,
        },
        "slices": {
            "n": len(slices),
            "composition": composition,
            "auc_on": f"UCSD official test split ({sum(s['is_ucsd_test'] for s in slices)} slices)",
        },
        "settings": {
            "batch_size": BATCH,
            "quick": args.quick,
            "timed_passes": 1 if args.quick else 3,
            "latency_calls": 5 if args.quick else 50,
        },
        "exports": exports,
        "engines": _with_ratios(engines, card.decision.threshold) if engines else None,
        "whole_process": whole,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for name, entry in (results["engines"] or {}).items():
        agreement = entry["agreement_with_torch_fp32"]
        print(
            f"{name:>17}: {entry['throughput_slices_per_s']:7.1f} "
            f"slices/s (x{entry['ratio_to_baseline']['throughput']:.2f}), "
            f"end to end {entry['end_to_end_slices_per_s']:7.1f}/s, "
            f"p50 {entry['latency_p50_ms_batch1']:7.1f} ms, peak RSS {entry['peak_rss_mib']:6.0f} "
            f"MiB, AUC {entry['auc_ucsd_test']}, |dAUC| {entry['abs_delta_auc_vs_torch_fp32']}, "
            f"labels {agreement['label_agreement']:.3f}, OOD flags {agreement['ood_flag_agreement']}"
        )
    for name, entry in ((whole or {}).get("rows") or {}).items():
        ratio = entry.get("speedup_vs_plain_script")
        extra = (
            f", x{ratio} the plain script (by round {entry['speedup_by_round']}), "
            f"AUC {entry['auc_ucsd_test']}"
            if ratio
            else ""
        )
        cpu, rss = entry.get("cpu_seconds"), entry["peak_rss_mib"]
        print(f"{name:>60}: {entry['seconds']:7.2f} s (CPU {cpu} s), peak RSS {rss} MiB{extra}")
    print(f"wrote {args.out}")


def _select_slices(shared: Path, n_slices: int) -> tuple[list[dict], dict]:
    """UCSD test split (classes interleaved, so a prefix has both), then SARS block 9, then block
    8, up to ``n_slices``."""
    ucsd_test = [r for r in ucsd_rows(shared) if r["split"] == "test"]
    by_class = [
        [r for r in ucsd_test if r["label"] == label] for label in sorted({r["label"] for r in ucsd_test})
    ]
    interleaved = [r for group in zip(*by_class, strict=False) for r in group] + [
        r for group in by_class for r in group[min(map(len, by_class)) :]
    ]
    sars = sars_rows(shared)
    sources = {
        "ucsd_test": interleaved,
        "sars_block9": [r for r in sars if r["patient_id"].endswith("block9")],
        "sars_block8": [r for r in sars if r["patient_id"].endswith("block8")],
    }
    chosen, composition = [], {}
    for name, rows in sources.items():
        taken = rows[: max(0, n_slices - len(chosen))]
        composition[name] = len(taken)
        chosen += [
            {"path": r["path"], "is_covid": r["label"] == "COVID", "is_ucsd_test": name == "ucsd_test"}
            for r in taken
        ]
    return chosen, composition


def _series_slices(shared: Path) -> list[Path]:
    """``SERIES_SLICES`` consecutive SARS-CoV-2 COVID slices (blocks 8 and 9, in file
    order): the DICOM row."""
    blocks = ("block8", "block9")
    rows = [r for r in sars_rows(shared) if r["label"] == "COVID" and r["patient_id"].endswith(blocks)]
    return [Path(r["path"]) for r in rows[:SERIES_SLICES]]


def _ensure_exports(model_dir: Path, calibration: Path | None, *, quick: bool) -> dict:
    facts = {}
    for engine in (Engine.ONNX, Engine.ONNX_INT8):
        path = model_dir / engine.onnx_file
        if path.is_file():
            facts[str(engine)] = {"exported_now": False}
            continue
        print(f"no {path.name}: exporting it ...", flush=True)
        started = time.perf_counter()
        manifest = (
            read_manifest(calibration, positive_class=read_card(model_dir).positive_class)
            if calibration and engine is Engine.ONNX_INT8
            else None
        )
        export_onnx(
            model_dir,
            int8=engine is Engine.ONNX_INT8,
            calibration=manifest,
            calibration_slices=8 if quick else DEFAULT_CALIBRATION_SLICES,
        )
        facts[str(engine)] = {"exported_now": True, "export_seconds": round(time.perf_counter() - started, 1)}
    return facts


def _measure_in_subprocess(engine: str, args: argparse.Namespace, workdir: Path) -> dict:
    result = workdir / f"{engine}.json"
    command = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--model",
        str(args.model),
        "--slices",
        str(workdir / "slices.json"),
        "--result",
        str(result),
    ]
    subprocess.run([*command, *(["--quick"] if args.quick else [])], check=True)
    return json.loads(result.read_text(encoding="utf-8"))


def _run_worker(args: argparse.Namespace) -> None:
    """Measure one engine in this process and write its figures to ``args.result``."""
    rows = json.loads(args.slices.read_text(encoding="utf-8"))
    paths = [Path(r["path"]) for r in rows]
    card = read_card(args.model)
    predict, description, predictor = _engine(args.worker, args.model)
    decoded = decode_slices(paths, card.preprocessing)
    if len(decoded.indices) != len(paths):
        raise SystemExit(
            f"{len(paths) - len(decoded.indices)} benchmark slices failed to decode: {decoded.failures[:3]}"
        )
    predict(decoded.images[:BATCH])  # warm-up: first-call allocations, oneDNN / onnxruntime kernel selection
    passes, latency_calls = (1, 5) if args.quick else (3, 50)
    seconds, prob_covid = [], None
    for _ in range(passes):
        started = time.perf_counter()
        prob_covid = np.concatenate(
            [predict(decoded.images[i : i + BATCH]) for i in range(0, len(paths), BATCH)]
        )
        seconds.append(time.perf_counter() - started)
    latencies = []
    for i in range(latency_calls):
        started = time.perf_counter()
        predict(decoded.images[i : i + 1])
        latencies.append(time.perf_counter() - started)
    end_to_end = _end_to_end_seconds(predictor, paths, predict, card.preprocessing)
    is_test = np.array([r["is_ucsd_test"] for r in rows])
    labels = np.array([r["is_covid"] for r in rows])[is_test]
    auc = float(roc_auc_score(labels, prob_covid[is_test])) if len(set(labels)) == 2 else None
    figures = {
        "description": description,
        "throughput_slices_per_s": len(paths) / statistics.median(seconds),
        "end_to_end_slices_per_s": len(paths) / end_to_end,
        "latency_p50_ms_batch1": 1000 * statistics.median(latencies),
        "peak_rss_mib": _peak_rss_mib(),
        "auc_ucsd_test": auc,
        "torch_threads": torch.get_num_threads(),
        "per_slice": _per_slice(predictor, decoded.images, prob_covid),
    }
    args.result.write_text(json.dumps(figures, indent=2), encoding="utf-8")


def _engine(name: str, model_dir: Path) -> tuple[Callable[[np.ndarray], np.ndarray], str, Predictor | None]:
    """A function from (N, S, S) slices to (N,) prob_covid, its description, and the covidct predictor behind
    it (None for the baseline)."""
    if name == "baseline":
        return (*_baseline(model_dir), None)
    single_pass = name.endswith(SINGLE_PASS)
    name = name.removesuffix(SINGLE_PASS)
    predictor = load_model(
        model_dir, device="cpu", engine="torch" if name.startswith("torch") else name, batch_size=BATCH
    )
    if single_pass:
        predictor.card = replace(predictor.card, decision=replace(predictor.card.decision, tta_hflip=False))
    if name == "torch-fp32":
        fp32 = TorchEngine(predictor.model, device=predictor.device, use_bf16=False)
        predictor = Predictor(
            predictor.model,
            predictor.card,
            detector=predictor.detector,
            device="cpu",
            batch_size=BATCH,
            engine=fp32,
        )
    engine = predictor.engine
    description = (
        f"covidct {name}: {type(engine).__name__}, bf16 autocast {getattr(engine, 'use_bf16', False)}, "
        f"threads {getattr(engine, 'threads', torch.get_num_threads())}, "
        f"TTA flip {predictor.card.decision.tta_hflip}, OOD guard {predictor.detector is not None}"
    )
    return (
        (lambda slices: predictor.probabilities(slices)[:, predictor.card.positive_index]),
        description,
        predictor,
    )


def _per_slice(predictor: Predictor | None, slices: np.ndarray, prob_covid: np.ndarray) -> dict:
    """Each slice's prob_covid and, with a guard, whether it flags the slice (an untimed extra pass): for
    agreement between engines."""
    flagged = None
    if predictor is not None and predictor.detector is not None:
        scores = np.concatenate(
            [predictor.ood_scores(slices[i : i + BATCH]) for i in range(0, len(slices), BATCH)]
        )
        flagged = (~predictor.detector.is_in_distribution(scores)).tolist()
    return {"prob_covid": prob_covid.tolist(), "ood_flagged": flagged}


def _baseline(model_dir: Path) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    card = read_card(model_dir)
    model = build_resnet50(num_classes=len(card.classes), stride_variant=card.stride_variant)
    model.load_state_dict(load_file(model_dir / WEIGHTS_FILE))
    model.eval()

    def predict(slices: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = model(normalize(torch.from_numpy(slices).float().unsqueeze(1), card.preprocessing))
        return torch.softmax(logits, dim=1)[:, card.positive_index].numpy()

    return (
        predict,
        f"torchvision resnet50, eager fp32 NCHW, torch.no_grad, batch {BATCH}, no TTA, "
        f"softmax without the card's temperature, threads {torch.get_num_threads()}",
    )


def _end_to_end_seconds(
    predictor: Predictor | None,
    paths: list[Path],
    predict: Callable[[np.ndarray], np.ndarray],
    preprocessing: Preprocessing,
) -> float:
    """Files to probabilities: covidct streams (decoding overlaps compute); the baseline decodes, then
    computes, batch after batch."""
    started = time.perf_counter()
    if predictor is None:
        for i in range(0, len(paths), BATCH):
            predict(decode_slices(paths[i : i + BATCH], preprocessing).images)
    else:
        for _ in predictor.iter_predict(paths, batch_size=BATCH):
            pass
    return time.perf_counter() - started


def _agreement(per_slice: dict, reference: dict, threshold: float) -> dict:
    prob, ref_prob = np.array(per_slice["prob_covid"]), np.array(reference["prob_covid"])
    flagged, ref_flagged = per_slice["ood_flagged"], reference["ood_flagged"]
    return {
        "max_abs_prob_covid_diff": float(np.abs(prob - ref_prob).max()),
        "label_agreement": float(np.mean((prob >= threshold) == (ref_prob >= threshold))),
        "ood_flag_agreement": None
        if flagged is None or ref_flagged is None
        else float(np.mean(np.array(flagged) == np.array(ref_flagged))),
    }


def _peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, because Linux carries ru_maxrss over from the parent
    through fork and exec (a child of a large parent would report the parent's peak)."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reference_of(name: str) -> str:
    """torch fp32 at the same TTA setting as ``name``: the reference for AUC and per-slice agreement."""
    return AUC_REFERENCE + (SINGLE_PASS if name.endswith(SINGLE_PASS) else "")


def _with_ratios(engines: dict, threshold: float) -> dict:
    """Add each engine's ratios to the baseline and its agreement with covidct's torch fp32 path at the same
    TTA setting (per-slice lists dropped)."""
    base = engines["baseline"]
    per_slice = {name: entry.pop("per_slice") for name, entry in engines.items()}
    for name, entry in engines.items():
        reference = _reference_of(name)
        reference_auc = engines[reference]["auc_ucsd_test"]
        entry["agreement_with_torch_fp32"] = _agreement(per_slice[name], per_slice[reference], threshold)
        entry["ratio_to_baseline"] = {
            "throughput": entry["throughput_slices_per_s"] / base["throughput_slices_per_s"],
            "end_to_end": entry["end_to_end_slices_per_s"] / base["end_to_end_slices_per_s"],
            "latency_p50": entry["latency_p50_ms_batch1"] / base["latency_p50_ms_batch1"],
            "peak_rss": entry["peak_rss_mib"] / base["peak_rss_mib"],
        }
        both = entry["auc_ucsd_test"] is not None and reference_auc is not None
        entry["abs_delta_auc_vs_torch_fp32"] = abs(entry["auc_ucsd_test"] - reference_auc) if both else None
    return engines


if __name__ == "__main__":
    main()
