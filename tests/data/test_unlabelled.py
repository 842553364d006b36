"""read_unlabelled and content hashes: what self-supervised pre-training reads, its test rows known."""

from __future__ import annotations

import shutil

import pytest
from synthetic import write_csv

from covidct.data.content_hash import content_sha256, file_sha256
from covidct.data.manifest import Columns, read_unlabelled
from covidct.errors import CovidctWarning, InputError


def test_a_flat_folder_of_images_is_read_without_class_subfolders(tmp_path, tiny_dataset):
    for path in tiny_dataset.paths["COVID"][:3]:
        shutil.copy(path, tmp_path / path.name)

    inputs = read_unlabelled(tmp_path)

    assert [path.name for path in inputs.paths] == [path.name for path in tiny_dataset.paths["COVID"][:3]]
    assert inputs.splits == (None, None, None)
    assert inputs.without_test() == (inputs.paths, 0)


def test_class_subfolders_are_walked_and_other_files_named(tiny_dataset):
    with pytest.warns(CovidctWarning, match=r"manifest\.csv: .*not used"):
        inputs = read_unlabelled(tiny_dataset.root)

    assert sorted(inputs.paths) == sorted(tiny_dataset.paths["COVID"] + tiny_dataset.paths["non-COVID"])


def test_a_csv_keeps_its_splits_and_leaves_the_test_rows_out(tiny_dataset):
    inputs = read_unlabelled(tiny_dataset.csv)
    kept, excluded = inputs.without_test()

    assert (len(inputs.paths), len(kept), excluded) == (48, 36, 12)
    assert inputs.splits.count("test") == 12
    assert not {path.name for path in kept} & {
        path.name for path, split in zip(inputs.paths, inputs.splits, strict=True) if split == "test"
    }


def test_a_csv_needs_no_label_column(tmp_path, tiny_dataset):
    image = tmp_path / "slice.png"
    shutil.copy(tiny_dataset.paths["COVID"][0], image)
    csv_path = write_csv(tmp_path / "rows.csv", [{"file": "slice.png", "official_split": "val"}])

    inputs = read_unlabelled(csv_path, columns=Columns(path="file", split="official_split"))

    assert (inputs.paths, inputs.splits) == ((image,), ("val",))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"image": "a.png"}], r"no column 'path' \(columns: \['image'\]\); name yours with --path-col"),
        ([{"path": "a.png", "split": "holdout"}], "line 2: split 'holdout' is not one of train, val, test"),
        ([{"path": " ", "split": "train"}], "line 2: empty path in column 'path'"),
    ],
    ids=["no-path-column", "unknown-split", "empty-path"],
)
def test_csv_errors_name_the_csv_and_the_fix(tmp_path, rows, message):
    csv_path = write_csv(tmp_path / "rows.csv", rows)

    with pytest.raises(InputError, match=message) as raised:
        read_unlabelled(csv_path)

    assert raised.value.path == str(csv_path)


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no images found"):
        read_unlabelled(tmp_path)


def test_content_hashes_follow_the_bytes_not_the_name(tmp_path, tiny_dataset):
    original = tiny_dataset.paths["COVID"][0]
    renamed = tmp_path / "renamed.png"
    shutil.copy(original, renamed)
    series, moved = tmp_path / "series", tmp_path / "moved"
    series.mkdir()
    for path in tiny_dataset.paths["COVID"][:2]:
        shutil.copy(path, series / path.name)
    shutil.copytree(series, moved)

    assert content_sha256(renamed) == content_sha256(original) == file_sha256(original)
    assert content_sha256(original) != content_sha256(tiny_dataset.paths["COVID"][1])
    assert content_sha256(series) == content_sha256(moved) != content_sha256(original)
