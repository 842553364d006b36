"""The report's Grad-CAM gallery: which cases it picks, the overlays it builds, and its HTML section."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from cards import tiny_card
from PIL import Image

from covidct.evaluate.evaluation import evaluation_metrics
from covidct.evaluate.gallery import (
    FALSE_NEGATIVES,
    FALSE_POSITIVES,
    GALLERY_KINDS,
    TRUE_POSITIVES,
    GalleryImage,
    build_gallery,
    gallery_section,
    pick_gallery_cases,
)
from covidct.evaluate.report import write_report
from covidct.model.network import build_resnet50

Y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
PROB = np.array([0.9, 0.6, 0.2, 0.8, 0.55, 0.1, 0.45, 0.3])

# (id, labels, probabilities, per_kind, expected indices per kind: TP, FP, FN)
CASES = [
    ("most-confident-first", Y, PROB, 4, ([0, 1], [3, 4], [2, 6])),
    ("per-kind-limit", Y, PROB, 1, ([0], [3], [2])),
    ("no-errors", np.array([1, 0]), np.array([0.9, 0.1]), 4, ([0], [], [])),
    ("all-negative", np.array([0, 0]), np.array([0.2, 0.7]), 4, ([], [1], [])),
]


@pytest.mark.parametrize(
    ("y", "prob", "per_kind", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_pick_gallery_cases(y, prob, per_kind, expected):
    cases = pick_gallery_cases(y, prob, 0.5, per_kind=per_kind)

    assert list(cases) == list(GALLERY_KINDS)
    assert [cases[kind].tolist() for kind in GALLERY_KINDS] == [list(indices) for indices in expected]


@pytest.fixture(scope="module")
def random_model_and_card():
    torch.manual_seed(0)
    card = tiny_card()
    return build_resnet50(num_classes=2).eval(), card


def test_build_gallery_makes_one_png_overlay_per_picked_case(random_model_and_card):
    model, card = random_model_and_card
    slices = torch.rand(len(Y), 32, 32)
    paths = [f"scans/slice_{i}.png" for i in range(len(Y))]

    images = build_gallery(
        model, card, slices, paths=paths, y_true=Y, prob=PROB, device=torch.device("cpu"), per_kind=1
    )

    assert [(image.kind, image.caption) for image in images] == [
        (TRUE_POSITIVES, "slice_0.png"),
        (FALSE_POSITIVES, "slice_3.png"),
        (FALSE_NEGATIVES, "slice_2.png"),
    ]
    for image in images:
        with Image.open(io.BytesIO(image.png)) as overlay:
            assert (overlay.format, overlay.mode, overlay.width) == ("PNG", "RGB", 256)


def test_the_gallery_section_names_every_kind_and_escapes_captions():
    images = [
        GalleryImage(TRUE_POSITIVES, "<b>a.png</b>", b"\x89PNG"),
        GalleryImage(FALSE_NEGATIVES, "c.png", b"\x89PNG"),
    ]

    section = gallery_section(images)

    assert "<h2>Grad-CAM gallery</h2>" in section
    assert "<h3>True positives (1)</h3>" in section and "<h3>False negatives (1)</h3>" in section
    assert (
        "<h3>False positives (0)</h3><p class='small'>No false positives in this split.</p>"
        in section.replace("\n", "")
    )
    assert section.count("<figure class='cam'>") == 2
    assert "&lt;b&gt;a.png&lt;/b&gt;" in section and "<b>a.png" not in section


def test_write_report_places_the_gallery_after_the_figures(tmp_path):
    result = evaluation_metrics(Y, PROB, 0.5, n_resamples=10)

    path = write_report(
        tmp_path,
        result,
        y_true=Y,
        prob=PROB,
        threshold=0.5,
        model_card={},
        title="t",
        class_names=("a", "b"),
        gallery_html=gallery_section([]),
    )
    page = path.read_text(encoding="utf-8")

    assert (
        page.index("<h2>Figures (slice level)</h2>")
        < page.index("<h2>Grad-CAM gallery</h2>")
        < page.index("<h2>Model card</h2>")
    )
