"""Grad-CAM: heatmaps' contract, overlays, unique overlay names, and ``Predictor.explain``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidct import load_model
from covidct.data.dataset import decode_slices
from covidct.infer.gradcam import gradcam_heatmaps
from covidct.infer.overlay import overlay_names, render_overlay
from covidct.infer.predictor import ExplanationRun


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def slices(tiny_dataset, predictor) -> torch.Tensor:
    """(6, 64, 64) float16 slices, 3 COVID then 3 non-COVID, prepared as the model's card says."""
    return decode_slices(
        tiny_dataset.paths["COVID"][:3] + tiny_dataset.paths["non-COVID"][:3], predictor.card.preprocessing
    ).images


def heatmaps_of(predictor, slices):
    return gradcam_heatmaps(
        predictor.model,
        slices,
        preprocessing=predictor.card.preprocessing,
        target_index=predictor.card.positive_index,
        device=predictor.device,
    )


def test_heatmaps_are_one_float32_map_in_0_1_per_slice(predictor, slices):
    heatmaps = heatmaps_of(predictor, slices)

    assert heatmaps.shape == (6, 64, 64) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0


def test_the_heatmap_of_a_trained_model_is_not_constant(predictor, slices):
    # A one-epoch model from random weights may hold no positive evidence for one class, whose maps are then
    # all zero (Grad-CAM's ReLU); the other class's maps must still vary.
    heatmaps = [
        heatmap
        for target in range(len(predictor.card.classes))
        for heatmap in gradcam_heatmaps(
            predictor.model,
            slices,
            preprocessing=predictor.card.preprocessing,
            target_index=target,
            device=predictor.device,
        )
    ]

    assert any(heatmap.max() == pytest.approx(1.0, abs=1e-3) and heatmap.std() > 0.05 for heatmap in heatmaps)


def test_heatmaps_work_inside_inference_mode_and_leave_no_gradients(predictor, slices):
    with torch.inference_mode():
        heatmaps = heatmaps_of(predictor, slices[:2])

    assert heatmaps == pytest.approx(heatmaps_of(predictor, slices[:2]), abs=1e-5)
    assert all(p.grad is None for p in predictor.model.parameters())
    assert heatmaps_of(predictor, slices[:0]).shape == (0, 64, 64)


def test_an_overlay_blends_the_slice_with_the_jet_colormap_above_a_caption_band():
    gray = np.full((64, 64), 0.5, np.float32)
    heatmap = np.zeros((64, 64), np.float32)
    heatmap[:32] = 1.0

    image = render_overlay(gray, heatmap, "COVID  P(COVID) = 0.970")
    pixels = np.asarray(image).astype(int)

    assert (
        image.mode == "RGB" and image.width == 256 and image.height > 256
    )  # 64 px enlarged 4x, caption below
    # 0.55 x gray 0.5 + 0.45 x jet: dark red (0.5, 0, 0) where the heatmap is 1, dark blue
    # (0, 0, 0.5) where it is 0
    assert pixels[10, 128].tolist() == pytest.approx([127, 70, 70], abs=2)
    assert pixels[250, 128].tolist() == pytest.approx([70, 70, 127], abs=2)
    assert pixels[257:].max() == 255  # white caption text on the black band


# (id, input paths, expected overlay names)
NAMES = [
    ("distinct", ["a/x.png", "a/y.png"], ["x_cam.png", "y_cam.png"]),
    ("same-stem-two-folders", ["a/x.png", "b/x.png", "c/x.png"], ["x_cam.png", "x_2_cam.png", "x_3_cam.png"]),
    ("same-stem-two-types", ["x.png", "x.jpg"], ["x_cam.png", "x_2_cam.png"]),
    (
        "a-stem-that-looks-numbered",
        ["x_2.png", "x.png", "b/x.png"],
        ["x_2_cam.png", "x_cam.png", "x_3_cam.png"],
    ),
]


@pytest.mark.parametrize(("paths", "expected"), [case[1:] for case in NAMES], ids=[case[0] for case in NAMES])
def test_overlay_names_are_unique(paths, expected):
    assert overlay_names(paths) == expected


def test_explain_adds_heatmap_and_slice_to_the_same_predictions(predictor, tiny_dataset):
    paths = tiny_dataset.paths["COVID"][:2] + tiny_dataset.paths["non-COVID"][:1]

    run = predictor.explain(paths)

    assert isinstance(run, ExplanationRun)
    assert [e.path for e in run.explanations] == [str(p) for p in paths]
    assert run.predictions == predictor.predict(paths).predictions
    for explanation in run.explanations:
        assert explanation.heatmap.shape == explanation.slice.shape == (64, 64)
        assert explanation.heatmap.dtype == explanation.slice.dtype == np.float32
