"""audit_manifest and write_audit: shortcuts, duplicates, patient leaks, balance,
unreadable files, the report."""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from synthetic import write_csv
from volumes import chest_phantom, write_nifti

from covidct.data.audit import (
    HASH_BITS,
    NEAR_DUPLICATE_BITS,
    AuditResult,
    Severity,
    audit_manifest,
    categorical_shortcut_auc,
    hamming_bits,
    numeric_shortcut_auc,
    perceptual_hash,
)
from covidct.data.audit_report import write_audit
from covidct.data.manifest import Columns, read_manifest
from covidct.errors import OptionError
from covidct.intended_use import RESEARCH_USE_STATEMENT

SPLIT_OF_INDEX = ("train", "train", "train", "val", "test", "test")
PNG_L = ("PNG", "L", ".png")
JSON_KEYS = {
    "dataset",
    "n_images",
    "n_unreadable",
    "classes",
    "positive_class",
    "split_source",
    "thresholds",
    "findings",
    "attributes",
    "class_balance",
    "duplicate_clusters",
    "unreadable",
}


def random_picture(seed: int, size: int = 64) -> Image.Image:
    """A (size, size) grayscale picture of random blobs: different seeds give unrelated pictures.

    A 16 x 16 grid upsampled puts energy in all the hashed frequencies, as CT anatomy does; a smoother
    picture leaves most hash bits on near-zero coefficients, where any edit flips them.
    """
    coarse = (np.random.default_rng(seed).random((16, 16)) * 255).astype(np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)


def brighter_and_resized(image: Image.Image) -> Image.Image:
    """A near copy: 20% brighter and resized to 80 x 72 (what a re-export of a figure does)."""
    return ImageEnhance.Brightness(image).enhance(1.2).resize((80, 72), Image.Resampling.BILINEAR)


@dataclass(frozen=True)
class Img:
    """One image of a synthetic dataset: its class, picture seed, split, patient and how it is stored."""

    label: str
    seed: int
    split: str = "train"
    patient: str | None = None
    stored_as: tuple[str, str, str] = PNG_L  # Pillow format, colour mode, file extension
    edit: Callable[[Image.Image], Image.Image] | None = None
    name: str | None = None
    is_truncated: bool = False


def balanced(per_class: int = 6, *, stored_as: dict[str, tuple[str, str, str]] | None = None) -> list[Img]:
    """``per_class`` unrelated pictures per class, one patient each, spread over train/val/test."""
    stored_as = stored_as or {}
    return [
        Img(
            label,
            seed=offset + index,
            split=SPLIT_OF_INDEX[index % len(SPLIT_OF_INDEX)],
            patient=f"{label[0].upper()}{index}",
            stored_as=stored_as.get(label, PNG_L),
        )
        for offset, label in ((0, "COVID"), (100, "non-COVID"))
        for index in range(per_class)
    ]


def write_dataset(root: Path, images: list[Img], *, has_ids: bool = True, has_splits: bool = True) -> Path:
    """Write the images under ``root/<label>/`` and a CSV manifest (path, label[, patient_id][,
    split]); return the CSV."""
    rows = []
    for number, spec in enumerate(images):
        file_format, mode, suffix = spec.stored_as
        path = root / spec.label / (spec.name or f"{spec.label}_{number}{suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = random_picture(spec.seed)
        picture = spec.edit(picture) if spec.edit else picture
        picture.convert(mode).save(path, format=file_format)
        if spec.is_truncated:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        row = {"path": path.relative_to(root).as_posix(), "label": spec.label}
        row |= {"patient_id": spec.patient or ""} if has_ids else {}
        row |= {"split": spec.split} if has_splits else {}
        rows.append(row)
    return write_csv(root / "manifest.csv", rows)


def audit_csv(csv_path: Path) -> AuditResult:
    return audit_manifest(read_manifest(csv_path))


# --- the hash and the AUCs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_other", "is_near"),
    [
        pytest.param(lambda image: image, True, id="identical"),
        pytest.param(brighter_and_resized, True, id="brighter-and-resized"),
        pytest.param(lambda image: ImageEnhance.Contrast(image).enhance(0.7), True, id="lower-contrast"),
        pytest.param(lambda image: random_picture(7), False, id="unrelated-picture"),
    ],
)
def test_near_copies_hash_within_the_threshold_and_unrelated_pictures_far_outside(make_other, is_near):
    picture = random_picture(3)
    as_gray = lambda image: np.asarray(image.convert("L"), dtype=np.float32) / 255
    one, other = perceptual_hash(as_gray(picture)), perceptual_hash(as_gray(make_other(picture)))

    bits = int(hamming_bits(one, other[None, :])[0])

    assert one.shape == (HASH_BITS // 8,) and one.dtype == np.uint8
    assert (bits <= NEAR_DUPLICATE_BITS) is is_near, bits
    if not is_near:
        assert bits >= 2 * NEAR_DUPLICATE_BITS, bits


CATEGORICAL_CASES = [
    pytest.param(["PNG"] * 10 + ["JPEG"] * 10, [1] * 10 + [0] * 10, 1.0, id="category-equals-label"),
    pytest.param(
        [f"{i}x{i}" for i in range(20)],
        [1] * 10 + [0] * 10,
        0.5,
        id="unique-category-per-image-is-not-a-shortcut",
    ),
    pytest.param(["PNG"] * 20, [1] * 10 + [0] * 10, 0.5, id="one-category"),
    pytest.param(["PNG"] * 9 + ["JPEG"] * 11, [1] * 9 + [0] * 9 + [1, 0], 0.95, id="nearly-equals-label"),
    pytest.param(["PNG", "JPEG"] * 10, [1] * 10 + [0] * 10, 0.5, id="category-independent-of-label"),
    pytest.param(["PNG"] * 5 + ["JPEG"] * 5, [1] + [0] * 9, math.nan, id="one-positive-image-is-undefined"),
]


@pytest.mark.parametrize(("values", "labels", "expected"), CATEGORICAL_CASES)
def test_categorical_shortcut_auc(values, labels, expected):
    auc = categorical_shortcut_auc(values, np.array(labels, dtype=bool))

    if math.isnan(expected):
        assert math.isnan(auc)
    else:
        assert auc == pytest.approx(expected, abs=0.05)


NUMERIC_CASES = [
    pytest.param([512] * 10 + [256] * 10, [1] * 10 + [0] * 10, 1.0, id="bigger-is-positive"),
    pytest.param([256] * 10 + [512] * 10, [1] * 10 + [0] * 10, 1.0, id="smaller-is-positive-counts-too"),
    pytest.param([300] * 20, [1] * 10 + [0] * 10, 0.5, id="constant"),
    pytest.param([1, 2, 3, 4], [1, 1, 1, 1], math.nan, id="one-class-is-undefined"),
]


@pytest.mark.parametrize(("values", "labels", "expected"), NUMERIC_CASES)
def test_numeric_shortcut_auc_is_max_of_auc_and_its_complement(values, labels, expected):
    auc = numeric_shortcut_auc(values, np.array(labels, dtype=bool))

    assert math.isnan(auc) if math.isnan(expected) else auc == pytest.approx(expected)


# --- audit_manifest on synthetic datasets --------------------------------------------------------------


def png_rgba_covid_and_jpeg_non_covid(root: Path) -> Path:
    return write_dataset(
        root, balanced(stored_as={"COVID": ("PNG", "RGBA", ".png"), "non-COVID": ("JPEG", "L", ".jpg")})
    )


def covid_png_files_holding_jpeg(root: Path) -> Path:
    return write_dataset(root, balanced(stored_as={"COVID": ("JPEG", "L", ".png")}))


def same_file_in_both_classes(root: Path) -> Path:
    images = balanced()
    return write_dataset(
        root, [*images, Img("non-COVID", seed=images[0].seed, patient="N99", name="copy<b>&.png")]
    )


def near_copy_in_another_split(root: Path) -> Path:
    return write_dataset(
        root, [*balanced(), Img("COVID", seed=0, split="test", patient="C99", edit=brighter_and_resized)]
    )


def near_copy_in_the_same_split(root: Path) -> Path:
    return write_dataset(
        root, [*balanced(), Img("COVID", seed=0, split="train", patient="C0", edit=brighter_and_resized)]
    )


def patient_in_train_and_test(root: Path) -> Path:
    return write_dataset(root, [*balanced(), Img("non-COVID", seed=50, split="test", patient="N0")])


def no_patient_ids(root: Path) -> Path:
    return write_dataset(root, balanced(), has_ids=False)


def some_patient_ids_missing(root: Path) -> Path:
    images = balanced()
    return write_dataset(
        root, [Img(i.label, i.seed, i.split, None if n < 2 else i.patient) for n, i in enumerate(images)]
    )


def a_truncated_file(root: Path) -> Path:
    return write_dataset(
        root, [*balanced(), Img("COVID", seed=60, patient="C60", name="broken.png", is_truncated=True)]
    )


def four_covid_per_non_covid_in_train(root: Path) -> Path:
    extra = [Img("COVID", seed=200 + n, split="train", patient=f"C{200 + n}") for n in range(9)]
    return write_dataset(root, [*balanced(), *extra])


FINDING_CASES = [
    pytest.param(
        png_rgba_covid_and_jpeg_non_covid,
        Severity.WARNING,
        "shortcut",
        r"^file format \(as Pillow reads the bytes\) alone "
        r"predicts COVID \(out-of-fold AUC 1\.00 >= 0\.70\): "
        r"JPEG: 0 COVID / 6 non-COVID; PNG: 6 COVID / 0 non-COVID; .*decode and resize every class alike",
        id="format",
    ),
    pytest.param(
        png_rgba_covid_and_jpeg_non_covid,
        Severity.WARNING,
        "shortcut",
        r"^colour mode alone predicts COVID .*RGBA: 6 COVID / 0 non-COVID",
        id="mode",
    ),
    pytest.param(
        covid_png_files_holding_jpeg,
        Severity.WARNING,
        "shortcut",
        r"^file format .*AUC 1\.00.*JPEG: 6 COVID / 0 non-COVID",
        id="png-holding-jpeg",
    ),
    pytest.param(
        same_file_in_both_classes,
        Severity.WARNING,
        "cross_label_duplicate",
        r"^1 duplicate cluster\(s\) \(1 exact, 0 near; 2 images\) "
        r"hold images of more than one class; .*drop or relabel them: "
        r"COVID/COVID_0\.png \(COVID, train\) = non-COVID/copy<b>&\.png \(non-COVID, train\)$",
        id="cross-label",
    ),
    pytest.param(
        near_copy_in_another_split,
        Severity.WARNING,
        "cross_split_duplicate",
        r"^1 duplicate cluster\(s\) \(0 exact, 1 near; 2 images\) "
        r"span splits, so test images have copies in training.*"
        r"COVID/COVID_0\.png \(COVID, train\) = COVID/COVID_12\.png \(COVID, test\)$",
        id="cross-split",
    ),
    pytest.param(
        near_copy_in_the_same_split,
        Severity.INFO,
        "duplicate",
        r"^1 duplicate cluster\(s\) \(0 exact, 1 near; 2 images\) stay within one class and split",
        id="within-split",
    ),
    pytest.param(
        patient_in_train_and_test,
        Severity.WARNING,
        "patient_in_several_splits",
        r"^1 patient\(s\) are in more than one split \(e\.g\. N0 in "
        r"train and test\); fix the split column or drop --split-col",
        id="leak",
    ),
    pytest.param(
        no_patient_ids,
        Severity.WARNING,
        "missing_patient_ids",
        r"^no image has a patient id, so slices of one patient can sit in train and test.*\(--group-col\)$",
        id="no-ids",
    ),
    pytest.param(
        some_patient_ids_missing,
        Severity.WARNING,
        "missing_patient_ids",
        r"^2 of 12 images have no patient id, so slices",
        id="some-ids",
    ),
    pytest.param(
        a_truncated_file,
        Severity.WARNING,
        "unreadable",
        r"^COVID/broken\.png: cannot decode image \(.*\); left out of these checks and of training$",
        id="truncated",
    ),
    pytest.param(
        four_covid_per_non_covid_in_train,
        Severity.WARNING,
        "class_imbalance",
        r"^the train split has 4\.0 COVID images per non-COVID image "
        r"\(12 COVID / 3 non-COVID\); .*sensitivity and specificity$",
        id="imbalance",
    ),
    pytest.param(
        no_patient_ids,
        Severity.INFO,
        "class_balance",
        r"^images per class: all 6 COVID / 6 non-COVID; train 3 COVID / 3 "
        r"non-COVID; val 1 COVID / 1 non-COVID; test 2 COVID / 2 non-COVID$",
        id="balance",
    ),
]


@pytest.mark.parametrize(("make_dataset", "severity", "code", "message"), FINDING_CASES)
def test_each_problem_becomes_a_finding_with_its_numbers(make_dataset, severity, code, message, tmp_path):
    result = audit_csv(make_dataset(tmp_path))

    matching = [f for f in result.findings if f.code == code and re.search(message, f.message)]
    assert len(matching) == 1, [f"{f.code}: {f.message}" for f in result.findings]
    assert matching[0].severity is severity


def test_a_clean_dataset_has_no_warnings_and_no_shortcut(tmp_path):
    result = audit_csv(write_dataset(tmp_path, balanced()))

    assert result.warnings == ()
    assert [f.code for f in result.findings] == ["class_balance"]
    assert {a.name: a.auc for a in result.attributes if a.kind == "categorical"} == dict.fromkeys(
        ("format", "extension", "mode", "bit_depth"), 0.5
    )
    assert result.clusters == ()


def test_format_shortcut_has_auc_one_and_a_png_of_jpeg_bytes_counts_as_jpeg(tmp_path):
    result = audit_csv(covid_png_files_holding_jpeg(tmp_path))

    aucs = {a.name: a.auc for a in result.attributes}
    assert aucs["format"] == 1.0
    assert aucs["extension"] == 0.5
    assert {a.name for a in result.attributes if a.is_shortcut} == {"format"}
    assert result.attributes[0].counts == {
        "JPEG": {"COVID": 6, "non-COVID": 0},
        "PNG": {"COVID": 0, "non-COVID": 6},
    }


def test_a_cross_label_copy_is_one_exact_cluster_first_in_the_list(tmp_path):
    result = audit_csv(same_file_in_both_classes(tmp_path))

    assert len(result.clusters) == 1
    cluster = result.clusters[0]
    assert [result.display_path(p) for p in cluster.paths] == ["COVID/COVID_0.png", "non-COVID/copy<b>&.png"]
    assert (cluster.is_exact, cluster.spans_labels, cluster.spans_splits) == (True, True, False)


def test_a_truncated_file_is_left_out_and_the_other_checks_still_run(tmp_path):
    result = audit_csv(a_truncated_file(tmp_path))

    assert [Path(f.path).name for f in result.failures] == ["broken.png"]
    assert result.n_images == 13
    assert sum(result.attributes[0].counts["PNG"].values()) == 12


def test_a_ct_volume_row_is_listed_as_not_audited_and_the_images_still_are(tmp_path):
    csv_path = write_dataset(tmp_path, balanced())
    write_nifti(tmp_path / "COVID" / "case.nii.gz", chest_phantom(4, 48, [1, 2]))
    with csv_path.open("a", encoding="utf-8") as handle:
        handle.write("COVID/case.nii.gz,COVID,C99,train\n")

    result = audit_csv(csv_path)

    assert [(Path(f.path).name, f.reason) for f in result.failures] == [
        (
            "case.nii.gz",
            "a CT volume (DICOM or NIfTI): the audit checks 2-D image files only, so this row is not audited",
        )
    ]
    assert result.n_images == 13


@pytest.mark.parametrize(
    ("per_class", "has_splits", "source"),
    [
        pytest.param(6, True, r"^the manifest's splits$", id="split-column"),
        pytest.param(
            40,
            False,
            r"^made as covidct makes them without a split column \(15% val, 15% test, seed 0\)$",
            id="assigned",
        ),
        pytest.param(
            3,
            False,
            r"^none \(covidct could not split this data: class COVID has only "
            r"3 patients/groups; a stratified 15% hold-out needs at least 7",
            id="too-few-groups",
        ),
        pytest.param(
            4,
            False,
            r"^none \(covidct could not split this data: class \S+ has only \d+ patients/groups",
            id="class-smaller-than-folds",
        ),
    ],
)
def test_the_result_says_where_the_splits_came_from(per_class, has_splits, source, tmp_path):
    result = audit_csv(write_dataset(tmp_path, balanced(per_class), has_ids=False, has_splits=has_splits))

    assert re.search(source, result.split_source), result.split_source
    assert set(result.class_balance) == ({"all", "train", "val", "test"} if per_class > 4 else {"all"})


def test_progress_is_reported_per_image(tmp_path):
    calls = []
    audit_manifest(
        read_manifest(write_dataset(tmp_path, balanced(2))),
        progress=lambda done, total: calls.append((done, total)),
    )

    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


# --- write_audit --------------------------------------------------------------------------------------


@pytest.fixture
def cross_label_audit(tmp_path) -> AuditResult:
    return audit_csv(same_file_in_both_classes(tmp_path / "data"))


def test_audit_json_has_its_fixed_keys_and_matches_the_result(cross_label_audit, tmp_path):
    json_path, _ = write_audit(tmp_path / "out", cross_label_audit)

    saved = json.loads(json_path.read_text(encoding="utf-8"))
    assert set(saved) == JSON_KEYS
    assert saved == json.loads(json.dumps(cross_label_audit.to_json_dict()))
    assert saved["duplicate_clusters"][0]["members"][1] == {
        "path": "non-COVID/copy<b>&.png",
        "label": "non-COVID",
        "split": "train",
        "group": "N99",
    }
    assert saved["thresholds"] == {
        "shortcut_auc": 0.7,
        "hash_bits": 256,
        "near_duplicate_bits": 32,
        "imbalance_ratio": 3.0,
    }


def test_audit_html_is_self_contained_escaped_and_shows_thumbnails(cross_label_audit, tmp_path):
    _, html_path = write_audit(tmp_path / "out", cross_label_audit)

    page = html_path.read_text(encoding="utf-8")
    assert html.escape(RESEARCH_USE_STATEMENT) in page
    assert "copy&lt;b&gt;&amp;.png" in page and "copy<b>" not in page
    assert page.count("src='data:image/png;base64,") == 2
    assert not re.search(r"https?://|<script|<link|src='(?!data:)", page)
    for heading in (
        "Findings",
        "Attributes that could predict the label (shortcuts)",
        "Class balance per split",
        "Duplicate clusters",
    ):
        assert f"<h2>{heading}</h2>" in page


def test_write_audit_refuses_an_out_path_that_is_a_file(cross_label_audit, tmp_path):
    (tmp_path / "taken").write_text("")

    with pytest.raises(
        OptionError, match=r"taken: --out exists and is not a folder; name a new or existing folder"
    ):
        write_audit(tmp_path / "taken", cross_label_audit)


# --- the shared UCSD data -----------------------------------------------------------------------------

UCSD_CROSS_LABEL = {
    "CT_COVID/kjr-21-e24-p5-29.png",
    "CT_COVID/kjr-21-e24-p5-31.png",
    "CT_NonCOVID/71%0.jpg",
    "CT_NonCOVID/71%1.jpg",
}


@pytest.mark.shared_data
def test_ucsd_audit_finds_the_four_cross_label_copies_and_the_format_shortcut(shared_data):
    manifest = read_manifest(
        shared_data / "ucsd_covid_ct" / "metadata.csv",
        columns=Columns("rel_path", "label_name", "patient_id", "official_split"),
    )

    started = time.perf_counter()
    result = audit_manifest(manifest)
    print(f"audit of {len(manifest.samples)} UCSD images: {time.perf_counter() - started:.1f} s")

    cross_label = {
        result.display_path(p).removeprefix("images/")
        for c in result.clusters
        if c.spans_labels
        for p in c.paths
    }
    assert cross_label == UCSD_CROSS_LABEL
    assert {"format", "extension"} & {a.name for a in result.attributes if a.is_shortcut}
    assert {f.code for f in result.warnings} >= {"shortcut", "cross_label_duplicate", "cross_split_duplicate"}
    assert result.failures == ()
