"""What runs the network at prediction time: torch (the default) or an ONNX Runtime export of it.

Every engine is one small callable, normalised (N, 3, S, S) float32 images to (N, 2048 + C) float32:
the penultimate features (the out-of-distribution guard's input) followed by the C class logits. The
engine is handed to ``model.forward.predict_logits`` as its ``net``, so test-time flips, batching and
the card's calibration are applied by the same code whichever engine runs.
"""

from __future__ import annotations

import difflib
import json
import os
from abc import ABC, abstractmethod
from enum import StrEnum
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from covidct.errors import ModelDirError, OptionError
from covidct.model.card import ModelCard
from covidct.model.checkpoint import file_sha256
from covidct.model.device import Device
from covidct.model.forward import predict_logits
from covidct.model.network import FEATURE_DIM, extract_features
from covidct.preprocess.transforms import Preprocessing

INPUT_NAME = "input"
OUTPUT_NAMES = ("features", "logits")


class Engine(StrEnum):
    """Which runtime computes the logits: torch, or onnxruntime on the fp32 or int8 ONNX export."""

    TORCH = "torch"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"

    @classmethod
    def _missing_(cls, value: object) -> Engine:
        names = [engine.value for engine in cls]
        close = difflib.get_close_matches(str(value).lower().replace("_", "-"), names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise OptionError(f"--engine must be {', '.join(names[:-1])} or {names[-1]}; got '{value}'{hint}")

    @property
    def onnx_file(self) -> str:
        """The file this engine reads in the model directory (and ``covidct export`` writes by default)."""
        return {Engine.ONNX: "model.onnx", Engine.ONNX_INT8: "model.int8.onnx"}[self]

    @property
    def export_command(self) -> str:
        return f"covidct export MODEL_DIR --format onnx{' --int8' if self is Engine.ONNX_INT8 else ''}"


class InferenceEngine(ABC):
    """Normalised (N, 3, S, S) float32 images -> (N, 2048 + C) penultimate features then logits.

    Attributes:
        kind: which engine this is.
        device: where ``predict_logits`` puts the inputs.
        use_bf16: whether ``predict_logits`` runs the engine under bf16 autocast.
        num_classes: C.
    """

    kind: Engine
    device: torch.device
    use_bf16: bool
    num_classes: int

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def features_and_logits(
        self, slices: torch.Tensor, *, preprocessing: Preprocessing, batch_size: int, tta_hflip: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return float32 (N, 2048) features and (N, C) logits of (N, S, S) grayscale slices in [0, 1].

        With ``tta_hflip`` both are averaged with the mirror image's (the head is linear, so the
        averaged features map to exactly the averaged logits).
        """
        if len(slices) == 0:
            return torch.empty(0, FEATURE_DIM), torch.empty(0, self.num_classes)
        outputs = predict_logits(self, slices, preprocessing=preprocessing, device=self.device, use_bf16=self.use_bf16, batch_size=batch_size, tta_hflip=tta_hflip)
        return outputs[:, :FEATURE_DIM], outputs[:, FEATURE_DIM:]


class TorchEngine(InferenceEngine):
    """The torch network itself: inference mode, channels_last and bf16 autocast where supported (see ``predict_logits``)."""

    kind = Engine.TORCH

    def __init__(self, model: nn.Module, *, device: torch.device, use_bf16: bool) -> None:
        self.model = model
        self.device = device
        self.use_bf16 = use_bf16
        self.num_classes = model.fc.out_features

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        features = extract_features(self.model, images)
        return torch.cat([features, self.model.fc(features)], dim=1)


class OnnxEngine(InferenceEngine):
    """An ONNX export run by onnxruntime's CPU provider, one intra-op thread per usable core.

    Args:
        path: an ONNX file written by ``covidct export`` (input ``input``, outputs ``features`` and ``logits``).
        kind: ``Engine.ONNX`` or ``Engine.ONNX_INT8`` (a label; the file decides the precision).
        threads: intra-op threads; default: the cores this process may use.

    Raises:
        ModelDirError: the file is not a loadable ONNX model with those inputs and outputs.
    """

    device = torch.device("cpu")
    use_bf16 = False

    def __init__(self, path: Path, *, kind: Engine = Engine.ONNX, threads: int | None = None) -> None:
        self.kind = Engine(kind)
        self.path = Path(path)
        self.threads = threads or available_cpus()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Spinning threads would compete with the decoding thread (and other jobs) for a small machine's cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own pybind11 types (Fail, InvalidProtobuf...)
            raise ModelDirError(f"onnxruntime cannot load this file ({str(error).splitlines()[0]})", path=self.path) from None
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
            raise ModelDirError(f"expected input '{INPUT_NAME}' and outputs {list(OUTPUT_NAMES)}; found {inputs} and {sorted(outputs)}; re-export it with 'covidct export'", path=self.path)
        self.num_classes = int(outputs["logits"][1])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        features, logits = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return torch.from_numpy(np.concatenate([features, logits], axis=1))


def open_onnx_engine(model_dir: Path, card: ModelCard, engine: Engine | str, *, device: Device | str = Device.AUTO, threads: int | None = None) -> OnnxEngine:
    """Open ``model_dir``'s export for ``engine`` after checking it was made from this directory's weights.

    Raises:
        ModelDirError: the export is missing (the message gives the ``covidct export`` command), has
            no settings file, or does not match its recorded hash or this directory's weights.
        OptionError: ``device`` is ``cuda`` (these engines run on the CPU).
    """
    engine = Engine(engine)
    if Device(device) is Device.CUDA:
        raise OptionError(f"--engine {engine} runs on the CPU (onnxruntime's CPU provider); use --device cpu or auto, or --engine torch for the GPU")
    model_dir = Path(model_dir)
    path = model_dir / engine.onnx_file
    if not path.is_file():
        raise ModelDirError(f"no {engine.onnx_file} for --engine {engine}; create it with '{engine.export_command.replace('MODEL_DIR', str(model_dir))}'", path=model_dir)
    settings = read_export_settings(path)
    if settings.get("sha256") != file_sha256(path):
        raise ModelDirError(f"{path.name} does not match the sha256 in {settings_path(path).name}; the file was modified: export it again", path=model_dir)
    if settings.get("source", {}).get("checkpoint_sha256") != card.checkpoint_sha256:
        raise ModelDirError(
            f"{path.name} was exported from other weights than this directory's model.safetensors; "
            f"export it again with '{engine.export_command.replace('MODEL_DIR', str(model_dir))}'",
            path=model_dir,
        )
    return OnnxEngine(path, kind=engine, threads=threads)


def settings_path(onnx_path: Path) -> Path:
    """The JSON file beside an export that records its sha256 and how it was made (``FILE.onnx.json``)."""
    return onnx_path.with_name(onnx_path.name + ".json")


def read_export_settings(onnx_path: Path) -> dict:
    """Read the settings JSON of an export.

    Raises:
        ModelDirError: it is missing or not JSON.
    """
    path = settings_path(onnx_path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDirError(f"no {path.name} beside {onnx_path.name}; export it again with 'covidct export'", path=onnx_path.parent) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelDirError(f"not valid JSON ({error})", path=path) from None


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity), else the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
