"""What runs the network whenever covidct scores slices: torch (``infer.torch_engine``) or an ONNX export.

Every engine turns (N, S, S) grayscale slices in [0, 1] into numpy (N, 2048) penultimate features (the
out-of-distribution guard's input) and (N, C) class logits, batched and mirror-averaged as the card
says. Prediction, evaluation, training-time validation and the guard's fit all score through one, so
``covidct evaluate --engine onnx-int8`` measures the model a user deploys. This module and the ONNX
engines use numpy and onnxruntime only: ``--engine onnx`` runs without torch.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from covidct.errors import ModelDirError, OptionError
from covidct.infer.engine_kind import Engine
from covidct.model.architecture import FEATURE_DIM
from covidct.model.card import ModelCard
from covidct.model.device import Device
from covidct.model.integrity import file_sha256
from covidct.preprocess.transforms import Preprocessing, normalize

INPUT_NAME = "input"
OUTPUT_NAMES = ("features", "logits")
# onnxruntime would move the int8 export's first quantization in front of the max-pool that follows the fp32
# image convolution, where its uint8 max-pool (plain NCHW, 14% of a pass) is slower than the fp32 one in the
# convolution's blocked layout. Left behind the pool, the outputs are bit-identical (the max commutes with a
# monotone quantizer) and an int8 pass is about a fifth faster: 13 vs 16.5 ms a slice on 2 cores (issue 16).
DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]


class InferenceEngine(ABC):
    """(N, S, S) grayscale slices in [0, 1] -> numpy (N, 2048) penultimate features and (N, C) logits.

    Attributes:
        kind: which engine this is.
        num_classes: C.
    """

    kind: Engine
    num_classes: int

    @abstractmethod
    def features_and_logits(
        self, slices: np.ndarray, *, preprocessing: Preprocessing, batch_size: int, tta_hflip: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return float32 (N, 2048) features and (N, C) logits of (N, S, S) slices in [0, 1].

        With ``tta_hflip`` both are averaged with the mirror image's (the head is linear, so the
        averaged features map to exactly the averaged logits).
        """


class OnnxEngine(InferenceEngine):
    """An ONNX export run by onnxruntime's CPU provider, one intra-op thread per usable core.

    Args:
        path: an ONNX file written by ``covidct export`` (input ``input``, outputs
            ``features`` and ``logits``).
        kind: ``Engine.ONNX`` or ``Engine.ONNX_INT8`` (a label; the file decides the precision).
        threads: intra-op threads; default: the cores this process may use.

    Raises:
        ModelDirError: the file is not a loadable ONNX model with those inputs and outputs.
    """

    def __init__(self, path: Path, *, kind: Engine = Engine.ONNX, threads: int | None = None) -> None:
        self.kind = Engine(kind)
        self.path = Path(path)
        self.threads = threads or available_cpus()
        import onnxruntime as ort  # here: naming an Engine (the CLI's options) should not load it

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Spinning threads would compete with the decoding thread (and other jobs)
        # for a small machine's cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(self.path),
                sess_options=options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=DISABLED_OPTIMIZERS,
            )
        # onnxruntime raises its own pybind11 types (Fail, InvalidProtobuf...)
        except Exception as error:  # noqa: BLE001
            raise ModelDirError(
                f"onnxruntime cannot load this file ({str(error).splitlines()[0]})", path=self.path
            ) from None
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
            raise ModelDirError(
                f"expected input '{INPUT_NAME}' and outputs {list(OUTPUT_NAMES)}; found "
                f"{inputs} and {sorted(outputs)}; re-export it with 'covidct export'",
                path=self.path,
            )
        self.num_classes = int(outputs["logits"][1])

    def features_and_logits(
        self, slices: np.ndarray, *, preprocessing: Preprocessing, batch_size: int, tta_hflip: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        outputs = [np.empty((0, FEATURE_DIM + self.num_classes), np.float32)]
        for start in range(0, len(slices), batch_size):
            gray = np.asarray(slices[start : start + batch_size], dtype=np.float32)[:, None]
            images = normalize(gray, preprocessing)
            batch = self(images)
            if tta_hflip:
                batch = (batch + self(np.ascontiguousarray(images[..., ::-1]))) / 2
            outputs.append(batch)
        joined = np.concatenate(outputs)
        return joined[:, :FEATURE_DIM], joined[:, FEATURE_DIM:]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, 2048 + C) float32 features then logits of normalised (N, 3, S, S) float32 ``images``."""
        features, logits = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return np.concatenate([features, logits], axis=1)


def open_onnx_engine(
    model_dir: Path,
    card: ModelCard,
    engine: Engine | str,
    *,
    device: Device | str = Device.AUTO,
    threads: int | None = None,
) -> OnnxEngine:
    """Open ``model_dir``'s export for ``engine`` after checking it was made from this directory's weights.

    Raises:
        ModelDirError: the export is missing (the message gives the ``covidct export`` command), has
            no settings file, or does not match its recorded hash or this directory's weights.
        OptionError: ``device`` is ``cuda`` (these engines run on the CPU).
    """
    engine = Engine(engine)
    if Device(device) is Device.CUDA:
        raise OptionError(
            f"--engine {engine} runs on the CPU (onnxruntime's CPU provider); "
            "use --device cpu or auto, or --engine torch for the GPU"
        )
    model_dir = Path(model_dir)
    path = model_dir / engine.onnx_file
    if not path.is_file():
        raise ModelDirError(
            f"no {engine.onnx_file} for --engine {engine}; create it with "
            f"'{engine.export_command.replace('MODEL_DIR', str(model_dir))}'",
            path=model_dir,
        )
    settings = read_export_settings(path)
    if settings.get("sha256") != file_sha256(path):
        raise ModelDirError(
            f"{path.name} does not match the sha256 in "
            f"{settings_path(path).name}; the file was modified: export it again",
            path=model_dir,
        )
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
        raise ModelDirError(
            f"no {path.name} beside {onnx_path.name}; export it again with 'covidct export'",
            path=onnx_path.parent,
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelDirError(f"not valid JSON ({error})", path=path) from None


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity), else the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
