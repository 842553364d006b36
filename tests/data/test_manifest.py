"""read_manifest: class folders and CSV manifests become labelled rows, with errors that name the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from synthetic import write_csv

from covidct.data.manifest import Columns, read_manifest
from covidct.data.splits import check_no_patient_leak
from covidct.errors import InputError, OptionError

UCSD_COLUMNS = Columns(path="rel_path", label="label_name", group="patient_id", split="official_split")


def test_folder_layout_gives_one_class_per_subfolder(tiny_dataset):
    manifest = read_manifest(tiny_dataset.root)

    assert manifest.classes == ("COVID", "non-COVID")
    assert manifest.positive_class == "COVID"
    assert manifest.positive_index == 0
    assert manifest.class_counts() == {"COVID": 24, "non-COVID": 24}
    assert [s.path for s in manifest.samples] == tiny_dataset.paths["COVID"] + tiny_dataset.paths["non-COVID"]
    assert (manifest.has_patient_ids, manifest.has_splits) == (False, False)


def test_folder_layout_finds_images_in_nested_folders_and_ignores_other_files(tmp_path, tiny_dataset):
    for label in ("COVID", "non-COVID"):
        nested = tmp_path / label / "scan_1"
        nested.mkdir(parents=True)
        shutil.copy(tiny_dataset.paths[label][0], nested / "slice.png")
        (tmp_path / label / "notes.txt").write_text("not an image")

    manifest = read_manifest(tmp_path)

    assert [s.path.relative_to(tmp_path).as_posix() for s in manifest.samples] == [
        "COVID/scan_1/slice.png",
        "non-COVID/scan_1/slice.png",
    ]


@pytest.mark.parametrize("linked", ["class-folder", "scan-folder"])
def test_folder_layout_follows_symlinked_folders(tmp_path, tiny_dataset, linked):
    """Datasets are often assembled from symlinks to where the scans live; their images must count."""
    store = tmp_path / "store" / "scan_1"
    store.mkdir(parents=True)
    shutil.copy(tiny_dataset.paths["COVID"][0], store / "slice.png")
    (tmp_path / "data" / "non-COVID").mkdir(parents=True)
    shutil.copy(tiny_dataset.paths["non-COVID"][0], tmp_path / "data" / "non-COVID" / "slice.png")
    if linked == "class-folder":
        (tmp_path / "data" / "COVID").symlink_to(store, target_is_directory=True)
    else:
        (tmp_path / "data" / "COVID").mkdir()
        (tmp_path / "data" / "COVID" / "scan_1").symlink_to(store, target_is_directory=True)

    manifest = read_manifest(tmp_path / "data")

    assert manifest.class_counts() == {"COVID": 1, "non-COVID": 1}


def test_csv_layout_reads_paths_relative_to_the_csv_with_patients_and_splits(tiny_dataset):
    manifest = read_manifest(tiny_dataset.csv)

    assert manifest.classes == ("COVID", "non-COVID")
    assert len(manifest.samples) == 48
    assert all(s.path.is_file() for s in manifest.samples)
    assert (manifest.has_patient_ids, manifest.has_splits) == (True, True)
    assert manifest.samples[0].group == "C00"
    assert manifest.class_counts("train") == {"COVID": 12, "non-COVID": 12}
    assert manifest.class_counts("test") == {"COVID": 6, "non-COVID": 6}


def test_csv_columns_can_be_renamed(tmp_path):
    write_csv(
        tmp_path / "m.csv",
        [
            {"file": "a.png", "diagnosis": "COVID", "subject": "P1", "fold": "train"},
            {"file": "b.png", "diagnosis": "normal", "subject": "P2", "fold": "test"},
        ],
    )

    manifest = read_manifest(
        tmp_path / "m.csv", columns=Columns(path="file", label="diagnosis", group="subject", split="fold")
    )

    assert [(s.path, s.label, s.group, s.split) for s in manifest.samples] == [
        (tmp_path / "a.png", 0, "P1", "train"),
        (tmp_path / "b.png", 1, "P2", "test"),
    ]


def test_csv_without_group_or_split_columns_has_neither(tmp_path):
    write_csv(
        tmp_path / "m.csv", [{"path": "a.png", "label": "COVID"}, {"path": "b.png", "label": "non-COVID"}]
    )

    manifest = read_manifest(tmp_path / "m.csv")

    assert [(s.group, s.split) for s in manifest.samples] == [(None, None), (None, None)]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("train", "train"),
        ("training", "train"),
        ("Train", "train"),
        ("val", "val"),
        ("valid", "val"),
        ("validation", "val"),
        (" VAL ", "val"),
        ("test", "test"),
        ("TEST", "test"),
    ],
    ids=lambda value: repr(value) if isinstance(value, str) else None,
)
def test_split_aliases(tmp_path, written, expected):
    write_csv(
        tmp_path / "m.csv",
        [
            {"path": "a.png", "label": "COVID", "split": written},
            {"path": "b.png", "label": "non-COVID", "split": "train"},
        ],
    )

    assert read_manifest(tmp_path / "m.csv").samples[0].split == expected


def test_positive_class_sets_the_positive_index(tmp_path):
    write_csv(
        tmp_path / "m.csv", [{"path": "a.png", "label": "pneumonia"}, {"path": "b.png", "label": "normal"}]
    )

    manifest = read_manifest(tmp_path / "m.csv", positive_class="pneumonia")

    assert (manifest.classes, manifest.positive_index, manifest.positive_class) == (
        ("normal", "pneumonia"),
        1,
        "pneumonia",
    )


def test_sha256_does_not_depend_on_where_the_data_lives(tmp_path, tiny_dataset):
    copy = shutil.copytree(tiny_dataset.root, tmp_path / "elsewhere")

    assert read_manifest(copy / "manifest.csv").sha256() == read_manifest(tiny_dataset.csv).sha256()
    assert read_manifest(copy).sha256() == read_manifest(tiny_dataset.root).sha256()
    assert read_manifest(copy).sha256() != read_manifest(copy / "manifest.csv").sha256()


def test_select_keeps_one_split(tiny_dataset):
    manifest = read_manifest(tiny_dataset.csv)

    val = manifest.select("val")

    assert {s.split for s in val.samples} == {"val"}
    assert len(val.samples) == 12
    assert (val.classes, val.positive_index) == (manifest.classes, manifest.positive_index)


ROWS = [
    {"path": "a.png", "label": "COVID", "split": "train"},
    {"path": "b.png", "label": "non-COVID", "split": "test"},
]


def _csv(tmp_path: Path, rows: list[dict]) -> Path:
    return write_csv(tmp_path / "m.csv", rows)


def _text(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def _one_class_folder(tmp_path: Path) -> Path:
    (tmp_path / "data" / "COVID").mkdir(parents=True)
    (tmp_path / "data" / "COVID" / "a.png").write_bytes(b"")
    return tmp_path / "data"


def _empty_class_folders(tmp_path: Path) -> Path:
    for label in ("COVID", "non-COVID"):
        (tmp_path / "data" / label).mkdir(parents=True)
    return tmp_path / "data"


# (id, make the dataset, read_manifest options, error, message)
ERRORS = [
    (
        "missing-path-column",
        lambda t: _csv(t, [{"file": "a.png", "label": "COVID"}]),
        {},
        InputError,
        r"no column 'path' \(columns: \['file', 'label'\]\); name yours with --path-col",
    ),
    (
        "missing-renamed-path-column",
        lambda t: _csv(t, ROWS),
        {"columns": Columns(path="rel_path")},
        InputError,
        "no column 'rel_path'.*--path-col",
    ),
    (
        "missing-label-column",
        lambda t: _csv(t, [{"path": "a.png", "diagnosis": "COVID"}]),
        {},
        InputError,
        "no column 'label'.*name yours with --label-col",
    ),
    (
        "empty-label",
        lambda t: _csv(t, [ROWS[0], {"path": "c.png", "label": " ", "split": "val"}]),
        {},
        InputError,
        "line 3: empty label in column 'label'",
    ),
    (
        "short-row",
        lambda t: _text(t, "m.csv", "label,path\nCOVID,a.png\nnon-COVID\n"),
        {},
        InputError,
        "line 3: empty path in column 'path'",
    ),
    (
        "empty-path",
        lambda t: _text(t, "m.csv", "path,label\n,COVID\nb.png,non-COVID\n"),
        {},
        InputError,
        "line 2: empty path in column 'path'",
    ),
    (
        "bad-split",
        lambda t: _csv(t, [ROWS[0], {**ROWS[1], "split": "holdout"}]),
        {},
        InputError,
        "line 3: split 'holdout' is not one of train, val, test",
    ),
    (
        "empty-split",
        lambda t: _csv(t, [{**ROWS[0], "split": ""}, ROWS[1]]),
        {},
        InputError,
        "line 2: split '' is not one of train, val, test",
    ),
    (
        "unknown-positive-class-wrong-case",
        lambda t: _csv(t, ROWS),
        {"positive_class": "covid"},
        OptionError,
        r"^positive_class 'covid' is not one of the classes \['COVID', 'non-COVID'\] "
        r"\(did you mean 'COVID'\?\)",
    ),
    (
        "unknown-positive-class-typo",
        lambda t: _csv(t, ROWS),
        {"positive_class": "COVID-19"},
        OptionError,
        r"\(did you mean 'COVID'\?\)",
    ),
    (
        "unknown-positive-class-far",
        lambda t: _csv(t, ROWS),
        {"positive_class": "pneumonia"},
        OptionError,
        r"^positive_class 'pneumonia' is not one of the classes \['COVID', 'non-COVID'\]$",
    ),
    (
        "missing-dataset",
        lambda t: t / "absent",
        {},
        InputError,
        "dataset not found; expected a folder of class subfolders or a CSV manifest",
    ),
    (
        "not-csv",
        lambda t: _text(t, "list.txt", "a.png,COVID\n"),
        {},
        InputError,
        "expected a folder of class subfolders or a .csv manifest",
    ),
    ("header-only-csv", lambda t: _text(t, "m.csv", "path,label\n"), {}, InputError, "no images found"),
    ("empty-folders", _empty_class_folders, {}, InputError, "no images found"),
    (
        "single-class",
        _one_class_folder,
        {},
        InputError,
        r"found a single class \('COVID',\); training and evaluation need at least two",
    ),
]


@pytest.mark.parametrize(
    ("make", "options", "error", "message"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS]
)
def test_manifest_errors(tmp_path, make, options, error, message):
    data = make(tmp_path)

    with pytest.raises(error, match=message):
        read_manifest(data, **options)


def test_csv_errors_name_the_csv(tmp_path):
    csv_path = _csv(tmp_path, [{"file": "a.png", "label": "COVID"}])

    with pytest.raises(InputError) as raised:
        read_manifest(csv_path)

    assert raised.value.path == str(csv_path)


@pytest.mark.shared_data
def test_reads_the_shared_ucsd_metadata(shared_data):
    manifest = read_manifest(shared_data / "ucsd_covid_ct" / "metadata.csv", columns=UCSD_COLUMNS)

    assert len(manifest.samples) == 746
    assert manifest.classes == ("COVID", "non-COVID")
    assert manifest.positive_class == "COVID"
    assert (manifest.has_patient_ids, manifest.has_splits) == (True, True)
    assert manifest.class_counts("test") == {"COVID": 98, "non-COVID": 105}
    assert all(s.path.is_file() for s in manifest.samples[:20])
    check_no_patient_leak(manifest)


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        pytest.param(None, [None, None], id="no-source-column"),
        pytest.param(["ucsd", " "], ["ucsd", None], id="source-column-with-a-blank"),
    ],
)
def test_an_optional_source_column_names_each_rows_site(tmp_path, sources, expected):
    rows = [{"path": "a.png", "label": "COVID"}, {"path": "b.png", "label": "non-COVID"}]
    if sources is not None:
        rows = [{**row, "source": source} for row, source in zip(rows, sources, strict=True)]

    manifest = read_manifest(write_csv(tmp_path / "m.csv", rows))

    assert [sample.source for sample in manifest.samples] == expected
