"""discover_images: folders walked recursively in a fixed order, nothing dropped without a note."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from volumes import chest_phantom, write_dicom_series, write_nifti

from covidct.errors import LinkOutsideTreeWarning
from covidct.io.discover import (
    VolumeInput,
    VolumeKind,
    count_images,
    discover_images,
    iter_inputs,
)

PHANTOM = chest_phantom(3, 40, lung_slices=[1])


def touch(root: Path, *relative: str) -> None:
    for name in relative:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # discovery never decodes, so the content does not matter


def names(paths, root: Path) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


def test_folders_are_walked_recursively_in_sorted_order(tmp_path):
    touch(tmp_path, "b/2.png", "a/sub/3.JPG", "a/1.png", "a/0.tiff", "c/deep/er/4.bmp")

    found = discover_images([tmp_path])

    assert names(found.paths, tmp_path) == [
        "a/0.tiff",
        "a/1.png",
        "a/sub/3.JPG",
        "b/2.png",
        "c/deep/er/4.bmp",
    ]
    assert found.failures == []


def test_order_does_not_depend_on_creation_order(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    touch(first, "x/b.png", "x/a.png", "w/c.png")
    touch(second, "w/c.png", "x/a.png", "x/b.png")

    assert names(discover_images([first]).paths, first) == names(discover_images([second]).paths, second)


def test_non_image_files_in_folders_are_listed_as_skipped(tmp_path):
    touch(tmp_path, "scan.png", "notes.txt", "README", "sub/table.csv")

    found = discover_images([tmp_path])

    assert names(found.paths, tmp_path) == ["scan.png"]
    assert {(Path(s.path).relative_to(tmp_path).as_posix(), s.reason) for s in found.skipped} == {
        ("notes.txt", "not an image file type (.txt)"),
        ("README", "not an image file type (no extension)"),
        ("sub/table.csv", "not an image file type (.csv)"),
    }
    assert found.failures == []


def test_a_named_file_is_used_whatever_its_extension(tmp_path):
    touch(tmp_path, "slice.dat")

    found = discover_images([tmp_path / "slice.dat"])

    assert found.paths == [tmp_path / "slice.dat"]
    assert found.skipped == []


def test_inputs_keep_the_order_they_were_given(tmp_path):
    touch(tmp_path, "z.png", "folder/a.png", "m.png")

    found = discover_images([tmp_path / "z.png", tmp_path / "folder", str(tmp_path / "m.png")])

    assert names(found.paths, tmp_path) == ["z.png", "folder/a.png", "m.png"]


def test_a_missing_path_is_a_failure_and_the_others_go_on(tmp_path):
    touch(tmp_path, "scan.png")

    found = discover_images([tmp_path / "absent.png", tmp_path / "scan.png", tmp_path / "no_folder"])

    assert found.paths == [tmp_path / "scan.png"]
    assert [(f.path, f.reason) for f in found.failures] == [
        (str(tmp_path / "absent.png"), "no such file or folder"),
        (str(tmp_path / "no_folder"), "no such file or folder"),
    ]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_symlink_loop_does_not_hang_and_lists_each_image_once(tmp_path):
    touch(tmp_path, "data/a/1.png", "data/b/2.png")
    (tmp_path / "data" / "a" / "back_to_data").symlink_to(tmp_path / "data", target_is_directory=True)
    (tmp_path / "data" / "b" / "self").symlink_to(tmp_path / "data" / "b", target_is_directory=True)

    found = discover_images([tmp_path / "data"])

    assert names(found.paths, tmp_path / "data") == ["a/1.png", "b/2.png"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_images_behind_a_symlinked_folder_are_found_or_reported(tmp_path):
    """Datasets are often assembled from symlinked folders; their images must not vanish silently."""
    touch(tmp_path, "store/covid/1.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "covid").symlink_to(tmp_path / "store" / "covid", target_is_directory=True)

    found = discover_images([tmp_path / "data"])

    mentioned = [str(p) for p in found.paths] + [f.path for f in found.skipped + found.failures]
    assert any(path.endswith(("1.png", "covid")) for path in mentioned), found


def test_dicom_series_in_a_folder_become_one_volume_each_beside_images_and_nifti(tmp_path):
    first = write_dicom_series(tmp_path / "study", PHANTOM, seed=0)
    second = [
        path.rename(path.with_name(f"B{path.name}"))
        for path in write_dicom_series(tmp_path / "other", PHANTOM[:2], seed=1)
    ]
    for path in second:
        path.rename(tmp_path / "study" / path.name)
    write_nifti(tmp_path / "study" / "ct.nii.gz", PHANTOM)
    touch(tmp_path, "study/overview.png", "study/notes.txt")

    found = discover_images([tmp_path / "study"])

    folder = str(tmp_path / "study")
    assert found.paths == [tmp_path / "study" / "overview.png"]
    assert found.volumes == [
        VolumeInput(
            VolumeKind.NIFTI, str(tmp_path / "study" / "ct.nii.gz"), (tmp_path / "study" / "ct.nii.gz",)
        ),
        VolumeInput(
            VolumeKind.DICOM, f"{folder} (series 1 of 2)", tuple(tmp_path / "study" / p.name for p in second)
        ),
        VolumeInput(VolumeKind.DICOM, f"{folder} (series 2 of 2)", tuple(first)),
    ]
    assert [s.path for s in found.skipped] == [str(tmp_path / "study" / "notes.txt")]
    assert count_images([tmp_path / "study"]) == 4


def test_extension_less_dicom_files_are_recognised_by_their_marker(tmp_path):
    files = [path.rename(path.with_suffix("")) for path in write_dicom_series(tmp_path / "series", PHANTOM)]

    found = discover_images([tmp_path / "series"])

    assert found.volumes == [VolumeInput(VolumeKind.DICOM, str(tmp_path / "series"), tuple(sorted(files)))]
    assert found.skipped == []


def test_dicom_files_named_one_by_one_are_grouped_into_their_series(tmp_path):
    files = write_dicom_series(tmp_path / "series", PHANTOM)
    touch(tmp_path, "slice.png")

    items = list(iter_inputs([*files, tmp_path / "slice.png"]))

    assert items == [
        tmp_path / "slice.png",
        VolumeInput(VolumeKind.DICOM, str(tmp_path / "series"), tuple(files)),
    ]


def test_a_named_nifti_file_is_a_volume(tmp_path):
    path = write_nifti(tmp_path / "ct.nii", PHANTOM)

    assert list(iter_inputs([path])) == [VolumeInput("nifti", str(path), (path,))]


def test_an_unreadable_dicom_file_in_a_folder_is_a_failure_naming_the_series_read_without_it(tmp_path):
    write_dicom_series(tmp_path / "series", PHANTOM)
    (tmp_path / "series" / "broken.dcm").write_text("not dicom")

    found = discover_images([tmp_path / "series"])

    assert len(found.volumes) == 1 and len(found.volumes[0].files) == 3
    reason = (
        "not a DICOM file (no 'DICM' marker and no DICOM header); "
        f"left out of {tmp_path / 'series'}, which is read without it"
    )
    assert [(f.path, f.reason) for f in found.failures] == [(str(tmp_path / "series" / "broken.dcm"), reason)]


def _without_hanging(call):
    """``call()``'s result; fails (instead of hanging the suite) when it has not returned in 30 s."""
    results = []
    worker = threading.Thread(target=lambda: results.append(call()), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert results, "still waiting after 30 s (a FIFO opened for reading waits for a writer for ever)"
    return results[0]


def test_a_fifo_in_a_folder_is_skipped_with_a_message_not_waited_on(tmp_path):
    touch(tmp_path, "a.png")
    os.mkfifo(tmp_path / "b.png")
    os.mkfifo(tmp_path / "pipe")

    found = _without_hanging(lambda: discover_images([tmp_path]))
    named = _without_hanging(lambda: discover_images([tmp_path / "pipe"]))

    assert names(found.paths, tmp_path) == ["a.png"]
    assert [(Path(s.path).name, s.reason) for s in found.skipped] == [
        (n, "a FIFO (named pipe), not a regular file; skipped") for n in ("b.png", "pipe")
    ]
    assert [f.reason for f in named.failures] == ["a FIFO (named pipe), not a regular file; skipped"]


def test_symlinks_leading_out_of_the_folder_are_followed_and_named(tmp_path):
    inside, outside = tmp_path / "inside", tmp_path / "elsewhere"
    touch(outside, "other.png", "folder/deep.png")
    touch(inside, "own.png")
    (inside / "link.png").symlink_to(outside / "other.png")
    (inside / "linked").symlink_to(outside / "folder")
    (inside / "again.png").symlink_to(inside / "own.png")

    with pytest.warns(LinkOutsideTreeWarning) as caught:
        found = discover_images([inside])

    assert names(found.paths, inside) == ["again.png", "link.png", "own.png", "linked/deep.png"]
    assert len(caught) == 1
    assert str(caught[0].message) == (
        f"{inside}: 2 symlink(s) lead out of the folder and were "
        f"followed: {inside / 'linked'} -> {outside / 'folder'}; "
        f"{inside / 'link.png'} -> {outside / 'other.png'}"
    )
