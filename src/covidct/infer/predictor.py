"""Run a trained model directory on image files and CT volumes: the Python API behind ``covidct predict``.

torch is imported only where it runs: the torch engine and Grad-CAM. With an ONNX engine and no
explanation, loading and predicting use numpy, Pillow and onnxruntime alone.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidct.errors import InputError, OptionError
from covidct.infer.engine_kind import Engine
from covidct.infer.engines import InferenceEngine, open_onnx_engine
from covidct.infer.stream import computed_ahead, iter_slice_batches
from covidct.infer.study import StudyPrediction, study_prediction
from covidct.io.budget import DEFAULT_REQUEST_VOXELS, MAX_PIXELS
from covidct.io.discover import count_images
from covidct.io.failures import InputFailure
from covidct.io.volume import Volume
from covidct.model.card import ModelCard, read_card
from covidct.model.decision import label_at_threshold
from covidct.model.device import Device
from covidct.model.integrity import checked_weights_path
from covidct.model.ood import NOT_CT_LABEL, OodDetector, load_detector, not_ct_message
from covidct.preprocess.lung_slices import iter_lung_slice_indices, no_lung_error
from covidct.preprocess.pipeline import prepare_hu_slices, prepare_slices
from covidct.preprocess.window import HuWindow

if TYPE_CHECKING:
    import torch

# The first slices of a run (of files, or of a volume) are decoded and prepared before the network has
# anything to do (later batches are prepared while it runs): with a first batch of 8 rather than 32 it starts
# after about 0.1 s of that instead of 0.5 s on a 512 x 512 series, 0.09 s instead of 0.30 s on the speed
# benchmark's PNG and JPEG files (issue 16).
FIRST_BATCH_SIZE = 8


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image.

    For a chest CT slice: calibrated probabilities and the label at the card's threshold. For an input
    the out-of-distribution guard flags: ``label`` is ``"not-ct"``, ``prob_covid`` is None, there are
    no probabilities and ``message`` says why, because a COVID probability for a photo would mean nothing.

    Attributes:
        in_distribution: False when the guard flagged the input.
        ood_score: the guard's distance (larger is less CT-like), or None for a model without a guard.
        message: empty, or the reason the input was flagged.
    """

    path: str
    prob_covid: float | None
    label: str
    probabilities: dict[str, float]
    in_distribution: bool = True
    ood_score: float | None = None
    message: str = ""


@dataclass(frozen=True)
class PredictionRun:
    """Predictions for the inputs that worked, and a failure (path + reason) for each one that did not.

    ``predictions`` holds the 2-D images, ``studies`` the CT volumes (one per DICOM series or NIfTI file).
    """

    predictions: list[Prediction]
    failures: list[InputFailure]
    skipped: list[InputFailure]
    studies: list[StudyPrediction] = field(default_factory=list)


@dataclass(frozen=True)
class Explanation:
    """A prediction with its Grad-CAM heatmap and the slice as the model saw it.

    Attributes:
        slice: (S, S) float32 grayscale in [0, 1], resized to the card's image size.
        heatmap: (S, S) float32 in [0, 1]: where evidence for the positive class was (see ``infer.gradcam``).
    """

    prediction: Prediction
    slice: np.ndarray
    heatmap: np.ndarray

    @property
    def path(self) -> str:
        return self.prediction.path


@dataclass(frozen=True)
class ExplanationRun:
    """Explanations for the inputs that worked, and the failures and skipped files,
    as in ``PredictionRun``."""

    explanations: list[Explanation]
    failures: list[InputFailure]
    skipped: list[InputFailure]
    studies: list[StudyPrediction] = field(default_factory=list)

    @property
    def predictions(self) -> list[Prediction]:
        return [explanation.prediction for explanation in self.explanations]


class Predictor:
    """A loaded model: weights, card-driven preprocessing, calibration, threshold and
    out-of-distribution guard.

    Without a ``detector`` (a model trained before the guard) every input counts as in distribution.
    ``engine`` computes features and logits (default: ``model`` on ``device``, see ``infer.engines``);
    Grad-CAM always uses the torch ``model``, which may be None beside an ONNX ``engine``: it is then
    read from ``model_dir`` when Grad-CAM first needs it. ``window`` replaces the card's HU window for
    DICOM/NIfTI input in ``preprocessing`` (the card's own stays the one the model was trained with). An input
    whose header claims more than ``max_pixels`` pixels per image (or slice), or a study more than
    ``max_voxels`` voxels, is a failure, before decoding. ``decode_workers`` processes decode files (default
    0: one thread beside the network). They are spawned, so a script that asks for them needs the ``if
    __name__ == "__main__":`` guard; the CLI picks a number for the machine
    (``infer.stream.default_decode_workers``).
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        card: ModelCard,
        *,
        detector: OodDetector | None = None,
        device: Device | str = Device.AUTO,
        batch_size: int = 32,
        engine: InferenceEngine | None = None,
        window: HuWindow | None = None,
        max_pixels: int = MAX_PIXELS,
        decode_workers: int = 0,
        model_dir: Path | None = None,
        max_voxels: int = DEFAULT_REQUEST_VOXELS,
    ) -> None:
        if batch_size < 1:
            raise OptionError(f"batch_size must be at least 1; got {batch_size}", parameters=("batch_size",))
        if max_pixels < 1:
            raise OptionError(f"max_pixels must be at least 1; got {max_pixels}", parameters=("max_pixels",))
        if max_voxels < 1:
            raise OptionError(f"max_voxels must be at least 1; got {max_voxels}", parameters=("max_voxels",))
        if decode_workers < 0:
            raise OptionError(
                f"decode_workers must be 0 or more; got {decode_workers}", parameters=("decode_workers",)
            )
        if model is None and (engine is None or model_dir is None):
            raise ValueError("a Predictor without a torch model needs an engine and a model_dir")
        self.card = card
        self.detector = detector
        self._device_option = Device(device)
        self.batch_size = batch_size
        self.model_dir = model_dir
        self._model = None if model is None else self._prepared(model)  # torch engine and Grad-CAM
        self.engine = engine if engine is not None else self._torch_engine()
        self.preprocessing = (
            card.preprocessing if window is None else replace(card.preprocessing, hu_window=window)
        )
        self.max_pixels = max_pixels
        self.max_voxels = max_voxels
        self.decode_workers = decode_workers
        # Grad-CAM hooks sit on the shared model: another thread's forward pass would land in this heatmap
        # (another request's, another patient's image), so heatmaps are computed one call at a time.
        self._gradcam_lock = threading.Lock()

    @property
    def threshold(self) -> float:
        return self.card.decision.threshold

    @cached_property
    def device(self) -> torch.device:
        """Where the torch model runs (torch engine, Grad-CAM); the ONNX engines always run on the CPU."""
        from covidct.model.device import resolve_device

        return resolve_device(self._device_option)

    @property
    def model(self) -> torch.nn.Module:
        """The torch network folded for inference on ``device``; read from ``model_dir`` when first needed."""
        if self._model is None:
            from covidct.model.checkpoint import load_model_dir

            self._model = self._prepared(load_model_dir(self.model_dir)[0])
        return self._model

    def _prepared(self, model: torch.nn.Module) -> torch.nn.Module:
        from covidct.model.forward import prepare_for_inference

        return prepare_for_inference(model, self.device)

    def _torch_engine(self) -> InferenceEngine:
        from covidct.infer.torch_engine import TorchEngine
        from covidct.model.device import supports_bf16

        return TorchEngine(self.model, device=self.device, use_bf16=supports_bf16(self.device))

    def predict(
        self, inputs: Iterable[str | Path], *, progress: Callable[[int, int], None] | None = None
    ) -> PredictionRun:
        """Predict every image and study in ``inputs`` (files, or folders walked recursively).

        2-D images give ``predictions``; DICOM series and NIfTI files give ``studies`` (see
        ``predict_volume``). Inputs that cannot be used become failures with a reason; the others are
        still predicted.
        """
        run = self._run(inputs, progress=progress, explain=False)
        return PredictionRun(run.predictions, run.failures, run.skipped, run.studies)

    def iter_predict(
        self,
        inputs: Iterable[str | Path],
        *,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[PredictionRun]:
        """Yield each batch's predictions, failures and skipped files as soon as the batch is done.

        For folders of any size: the next batch is decoded in a background thread while this one
        runs, and nothing is kept between batches, so memory stays flat (``predict`` collects them).

        Args:
            inputs: files, or folders walked recursively.
            batch_size: slices decoded and yielded together (default: the predictor's, which also
                bounds each forward pass).
            progress: called with (image files done, total) after each batch; the total costs one
                extra walk of the folders.

        Raises:
            OptionError: ``batch_size`` < 1.
        """
        if batch_size is not None and batch_size < 1:
            raise OptionError(f"batch_size must be at least 1; got {batch_size}", parameters=("batch_size",))
        runs = self._iter_runs(
            inputs, batch_size=batch_size or self.batch_size, progress=progress, explain=False
        )
        return (PredictionRun(run.predictions, run.failures, run.skipped, run.studies) for run in runs)

    def explain(
        self, inputs: Iterable[str | Path], *, progress: Callable[[int, int], None] | None = None
    ) -> ExplanationRun:
        """Predict like ``predict`` and add each input's Grad-CAM heatmap and resized slice.

        A backward pass per image makes this about three times slower than ``predict``, and each result
        holds two (S, S) float32 arrays (0.4 MB at 224 px); flagged inputs get a heatmap too.
        """
        return self._run(inputs, progress=progress, explain=True)

    def predict_slices(
        self, names: Sequence[str], slices: Sequence[np.ndarray], *, explain: bool = False
    ) -> list[Explanation]:
        """Predict slices already decoded in memory (the server's uploads), prepared exactly as files are.

        Each result holds the resized slice (for previews); its heatmap is None unless ``explain``.

        Args:
            names: one label per slice (an upload's file name), reported as each prediction's ``path``.
            slices: (H, W) float32 grayscale in [0, 1], any size, as ``io.images.read_grayscale`` returns.
            explain: also compute each slice's Grad-CAM heatmap (about three times slower).
        """
        if len(names) != len(slices):
            raise ValueError(f"{len(names)} names for {len(slices)} slices")
        for name, gray in zip(names, slices, strict=True):
            if not np.isfinite(gray).all():
                raise InputError(
                    "NaN or infinite pixel values; expected finite gray levels in [0, 1]", path=name
                )
        # The file path's preparation (data.dataset.decode_slices), so an upload and its
        # file get the same answer.
        return self._explained(
            list(names), prepare_slices(slices, self.preprocessing), explain=explain, keep_slices=True
        )

    def predict_volume(self, volume: Volume, *, explain: bool = False) -> StudyPrediction:
        """Predict one study: its lung slices in batches, aggregated by the card's study
        rule (see ``infer.study``).

        Args:
            volume: a DICOM series or NIfTI volume in HU, as ``io.readers.read_volume`` returns it.
            explain: also attach the Grad-CAM heatmap of the most suspicious slice (one backward pass).

        Raises:
            InputError: no slice of the volume shows lung, or (read with deferred pixels) a file of it
                cannot be decoded.
        """
        indices: list[int] = []
        predictions: list[Prediction] = []
        for batch, images in computed_ahead(self._prepared_lung_batches(volume)):
            indices += batch.tolist()
            predictions += [
                e.prediction
                for e in self._explained(
                    [volume.slice_names[i] for i in batch], images, explain=False, keep_slices=False
                )
            ]
        if not indices:
            raise no_lung_error(volume)
        study = study_prediction(volume.origin, indices, predictions, self.card)
        if not (explain and study.suspicious_slices):
            return study
        index = study.suspicious_slices[0].index
        top = prepare_hu_slices(volume.hu_until(index + 1)[[index]], self.preprocessing)
        return replace(study, cam_slice=top[0].astype(np.float32), cam_heatmap=self._heatmaps(top)[0])

    def _prepared_lung_batches(self, volume: Volume) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices, network-ready slices) of the volume's lung slices, at most a batch at a time."""
        for batch in iter_lung_slice_indices(volume, self.batch_size, first_chunk_size=FIRST_BATCH_SIZE):
            if batch.size:
                # A view when the lung slices are consecutive (the usual case): copying them cost as much as
                # windowing them.
                is_run = batch[-1] - batch[0] + 1 == batch.size
                hu = volume.hu[batch[0] : batch[-1] + 1] if is_run else volume.hu[batch]
                yield batch, prepare_hu_slices(hu, self.preprocessing)

    def score(self, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated (N, C) class probabilities and (N,) guard distances (None without a guard), in one pass.

        Args:
            slices: (N, S, S) grayscale in [0, 1] at the card's size (``data.dataset.decode_slices``).
        """
        decision = self.card.decision
        features, logits = self.engine.features_and_logits(
            slices,
            preprocessing=self.preprocessing,
            batch_size=self.batch_size,
            tta_hflip=decision.tta_hflip,
        )
        scores = None if self.detector is None else self.detector.scores(features)
        return decision.probabilities(logits), scores

    def probabilities(self, slices: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (N, C) for (N, S, S) grayscale slices in [0, 1]."""
        return self.score(slices)[0]

    def ood_scores(self, slices: np.ndarray) -> np.ndarray | None:
        """(N,) guard distances for (N, S, S) grayscale slices in [0, 1], or None without a guard."""
        return self.score(slices)[1]

    def _run(
        self, inputs: Iterable[str | Path], *, progress: Callable[[int, int], None] | None, explain: bool
    ) -> ExplanationRun:
        explanations: list[Explanation] = []
        failures: list[InputFailure] = []
        skipped: list[InputFailure] = []
        studies: list[StudyPrediction] = []
        for run in self._iter_runs(inputs, batch_size=self.batch_size, progress=progress, explain=explain):
            explanations += run.explanations
            failures += run.failures
            skipped += run.skipped
            studies += run.studies
        return ExplanationRun(explanations, failures, skipped, studies)

    def _iter_runs(
        self,
        inputs: Iterable[str | Path],
        *,
        batch_size: int,
        progress: Callable[[int, int], None] | None,
        explain: bool,
    ) -> Iterator[ExplanationRun]:
        inputs = list(inputs)
        total, reported = (count_images(inputs) if progress else 0), 0
        batches = iter_slice_batches(
            inputs,
            preprocessing=self.preprocessing,
            batch_size=batch_size,
            max_pixels=self.max_pixels,
            decode_workers=self.decode_workers,
            max_voxels=self.max_voxels,
            first_batch_size=FIRST_BATCH_SIZE,
        )
        for batch in batches:
            explanations = self._explained(
                [str(path) for path in batch.paths], batch.images, explain=explain, keep_slices=explain
            )
            studies, failures = self._studies(batch.volumes, explain=explain)
            if progress and batch.n_images_seen > reported:
                reported = batch.n_images_seen
                progress(reported, max(total, reported))
            yield ExplanationRun(explanations, batch.failures + failures, batch.skipped, studies)

    def _studies(
        self, volumes: list[Volume], *, explain: bool
    ) -> tuple[list[StudyPrediction], list[InputFailure]]:
        """``predict_volume`` on each volume; one without lung becomes a failure and the others go on."""
        studies, failures = [], []
        for volume in volumes:
            try:
                studies.append(self.predict_volume(volume, explain=explain))
            except InputError as error:
                failures.append(InputFailure.from_error(error, volume.source))
        return studies, failures

    def _explained(
        self, names: list[str], images: np.ndarray, *, explain: bool, keep_slices: bool
    ) -> list[Explanation]:
        """One forward pass (and Grad-CAM when ``explain``) over (N, S, S) slices, one
        ``Explanation`` per name."""
        if not names:
            return []
        probabilities, scores = self.score(images)
        heatmaps = self._heatmaps(images) if explain else [None] * len(names)
        explanations = []
        for row, name in enumerate(names):
            prediction = self._prediction(
                name, probabilities[row], None if scores is None else float(scores[row])
            )
            slice_gray = images[row].astype(np.float32) if keep_slices else None
            explanations.append(Explanation(prediction, slice_gray, heatmaps[row]))
        return explanations

    def _heatmaps(self, slices: np.ndarray) -> np.ndarray:
        # Imported here: Grad-CAM needs torch and pytorch-grad-cam, which ONNX engines otherwise never load.
        from covidct.infer.gradcam import gradcam_heatmaps

        with self._gradcam_lock:
            return gradcam_heatmaps(
                self.model,
                slices,
                preprocessing=self.preprocessing,
                target_index=self.card.positive_index,
                device=self.device,
            )

    def _prediction(self, path: str, probabilities: np.ndarray, ood_score: float | None) -> Prediction:
        card = self.card
        if ood_score is not None and ood_score > self.detector.threshold:
            return Prediction(
                path,
                None,
                NOT_CT_LABEL,
                {},
                False,
                ood_score,
                not_ct_message(ood_score, self.detector.threshold),
            )
        by_class = {name: float(p) for name, p in zip(card.classes, probabilities, strict=True)}
        prob_covid = by_class[card.positive_class]
        if not math.isfinite(prob_covid):  # no class is ever answered without a probability
            raise InputError(
                "the model gave no finite probability (non-finite input values?); expected a CT image",
                path=path,
            )
        label = label_at_threshold(prob_covid, card, by_class)
        return Prediction(path, prob_covid, label, by_class, True, ood_score)


def load_model(
    model_dir: str | Path,
    *,
    device: Device | str = Device.AUTO,
    batch_size: int = 32,
    engine: Engine | str = Engine.TORCH,
    window: HuWindow | None = None,
    max_pixels: int = MAX_PIXELS,
    decode_workers: int = 0,
    max_voxels: int = DEFAULT_REQUEST_VOXELS,
) -> Predictor:
    """Load a model directory written by ``covidct train`` (on the CPU if there is no GPU).

    ``engine`` onnx or onnx-int8 runs ``model.onnx`` or ``model.int8.onnx`` (written by ``covidct
    export``) with onnxruntime on the CPU, without torch: the weights' hash is checked from their
    bytes, and the torch network is loaded only if Grad-CAM is asked for.
    ``window`` overrides the card's HU window for DICOM/NIfTI input (the CLI warns when it differs);
    ``max_pixels`` is the decompression-bomb cap on an image's (or slice's) width x height, ``max_voxels``
    the decoded-memory budget of one study;
    ``decode_workers`` processes decode files (see ``Predictor``).

    Raises:
        ModelDirError: missing or mismatched model files; a missing export names the command that writes it.
        OptionError: an unknown ``engine``, or an ONNX engine with ``device`` cuda.

    Warns:
        MissingOodDetectorWarning: the directory has no out-of-distribution guard (an older model).
    """
    engine, model_dir = Engine(engine), Path(model_dir)
    if engine is Engine.TORCH:
        # torch and torchvision: imported on the torch engine's path only.
        from covidct.model.checkpoint import load_model_dir

        model, card = load_model_dir(model_dir)
        runner = None
    else:
        card = read_card(model_dir)
        # model.safetensors' hash (~0.08 s of SHA-256 for a ResNet-50; hashlib releases the GIL) is computed
        # while onnxruntime opens the export: 0.21 -> 0.16 s to load (issue 16). Errors keep their order.
        with ThreadPoolExecutor(max_workers=2) as pool:
            weights_checked = pool.submit(checked_weights_path, model_dir, card)
            opened = pool.submit(open_onnx_engine, model_dir, card, engine, device=device)
            weights_checked.result()
            model, runner = None, opened.result()
    return Predictor(
        model,
        card,
        detector=load_detector(model_dir, card),
        device=device,
        engine=runner,
        batch_size=batch_size,
        window=window,
        max_pixels=max_pixels,
        decode_workers=decode_workers,
        model_dir=model_dir,
        max_voxels=max_voxels,
    )
