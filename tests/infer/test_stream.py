"""Streaming prediction: batches decoded ahead in a thread, yielded as they are done, in flat memory."""

from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np
import pytest
from cards import tiny_card
from PIL import Image

from covidct import Predictor
from covidct.errors import OptionError
from covidct.infer import stream
from covidct.infer.engine_kind import Engine
from covidct.infer.engines import InferenceEngine
from covidct.infer.stream import computed_ahead, iter_slice_batches
from covidct.model.network import FEATURE_DIM, build_resnet50
from covidct.preprocess.transforms import Preprocessing

SLICE_PX = 40  # the smallest images covidct reads are 32 px a side


class ConstantEngine(InferenceEngine):
    """Features and logits of zeros: the network's cost left out, so these tests time and
    measure the streaming alone."""

    kind = Engine.TORCH
    num_classes = 2

    def features_and_logits(self, slices, *, preprocessing, batch_size, tta_hflip):
        n = len(slices)
        return np.zeros((n, FEATURE_DIM), np.float32), np.zeros((n, self.num_classes), np.float32)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    card = tiny_card()
    return Predictor(
        build_resnet50(num_classes=2), card, device="cpu", batch_size=32, engine=ConstantEngine()
    )


def write_slices(root, n: int, *, per_folder: int = 100) -> None:
    """``n`` PNGs of SLICE_PX px, ``per_folder`` to a folder (one folder per patient, as
    scans are usually stored)."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SLICE_PX, SLICE_PX), dtype=np.uint8))
    for index in range(n):
        folder = root / f"patient_{index // per_folder:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"slice_{index:05d}.png")


@pytest.fixture
def mixed_folder(tmp_path):
    """5 images, a corrupt PNG between them and a text file, in sorted order: a0 a1 a2 b3 bad c4 notes.txt."""
    write_slices(tmp_path / "scans", 5, per_folder=5)
    folder = tmp_path / "scans" / "patient_0000"
    for index, name in enumerate(["a0", "a1", "a2", "b3", "c4"]):
        (folder / f"slice_{index:05d}.png").rename(folder / f"{name}.png")
    (folder / "bad.png").write_text("not an image")
    (folder / "notes.txt").write_text("a report")
    return folder


def test_batches_keep_the_walk_order_with_failures_and_skipped_files_in_their_batch(mixed_folder):
    batches = list(
        iter_slice_batches([mixed_folder], preprocessing=Preprocessing(image_size=32), batch_size=2)
    )

    assert [[p.name for p in b.paths] for b in batches] == [
        ["a0.png", "a1.png"],
        ["a2.png", "b3.png"],
        ["c4.png"],
        [],
    ]
    assert [[f.path for f in b.failures] for b in batches] == [[], [], [str(mixed_folder / "bad.png")], []]
    assert [[s.path for s in b.skipped] for b in batches] == [[], [], [], [str(mixed_folder / "notes.txt")]]
    assert [b.n_images_seen for b in batches] == [2, 4, 6, 6]
    assert [tuple(b.images.shape) for b in batches] == [(2, 32, 32), (2, 32, 32), (1, 32, 32), (0, 32, 32)]
    assert batches[0].images.dtype == np.float16


def test_a_smaller_first_batch_starts_the_stream_then_batches_are_full(mixed_folder):
    """The first batch is decoded while nothing else runs: ``first_batch_size`` keeps it short."""
    batches = list(
        iter_slice_batches(
            [mixed_folder], preprocessing=Preprocessing(image_size=32), batch_size=3, first_batch_size=1
        )
    )

    assert [[p.name for p in b.paths] for b in batches] == [
        ["a0.png"],
        ["a1.png", "a2.png", "b3.png"],
        ["c4.png"],
    ]
    assert [b.n_images_seen for b in batches] == [1, 4, 6]


def test_iter_predict_yields_each_batch_and_predict_collects_the_same(predictor, mixed_folder):
    seen = []

    runs = list(
        predictor.iter_predict(
            [mixed_folder], batch_size=2, progress=lambda done, total: seen.append((done, total))
        )
    )

    assert [[p.path.rsplit("/", 1)[1] for p in run.predictions] for run in runs] == [
        ["a0.png", "a1.png"],
        ["a2.png", "b3.png"],
        ["c4.png"],
        [],
    ]
    collected = predictor.predict([mixed_folder])
    assert [p for run in runs for p in run.predictions] == collected.predictions
    assert [f for run in runs for f in run.failures] == collected.failures
    assert [s for run in runs for s in run.skipped] == collected.skipped
    assert seen == [(2, 6), (4, 6), (6, 6)]


def test_stopping_early_ends_the_decoding_thread(predictor, tmp_path):
    write_slices(tmp_path, 200)
    runs = predictor.iter_predict([tmp_path], batch_size=4)

    first = next(runs)
    runs.close()

    assert len(first.predictions) == 4
    assert [t for t in threading.enumerate() if t.name == "covidct-decode"] == []


def test_an_unexpected_error_in_the_decoding_thread_reaches_the_caller(predictor, mixed_folder, monkeypatch):
    def broken(paths, preprocessing, **options):
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(stream, "decode_slices", broken)

    with pytest.raises(RuntimeError, match="decoder bug"):
        list(predictor.iter_predict([mixed_folder]))


def test_iter_predict_batch_size_must_be_positive(predictor):
    with pytest.raises(OptionError, match="^batch_size must be at least 1; got 0$"):
        predictor.iter_predict([], batch_size=0)


def streamed_peak_bytes(predictor: Predictor, folder) -> tuple[int, int]:
    """(predictions seen, peak bytes traced by tracemalloc while streaming ``folder``), keeping nothing."""
    tracemalloc.start()
    try:
        n_predictions = sum(len(run.predictions) for run in predictor.iter_predict([folder], batch_size=32))
        return n_predictions, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_from_500_to_5000_files(predictor, tmp_path):
    """Peak memory must not grow with the number of files: 10x the files, the same few batches in flight.

    Measured here: streaming peaks at about 0.4 MB for 500 and for 5,000 files; collecting the 5,000
    predictions (``predict``) peaks at 3.3 MB, and holding their decoded slices at 30 MB.
    """
    write_slices(tmp_path / "small", 500)
    write_slices(tmp_path / "large", 5000)

    n_small, peak_small = streamed_peak_bytes(predictor, tmp_path / "small")
    n_large, peak_large = streamed_peak_bytes(predictor, tmp_path / "large")

    assert (n_small, n_large) == (500, 5000)
    assert peak_large < peak_small * 1.2 + 200_000, (
        f"peak {peak_small:,} B for 500 files, {peak_large:,} B for 5,000"
    )


# --- decoding in worker processes ---


def test_worker_processes_decode_the_same_slices_and_failures_as_the_thread(mixed_folder):
    def batches(workers: int) -> list:
        return list(
            iter_slice_batches(
                [mixed_folder],
                preprocessing=Preprocessing(image_size=32, crop_field=True, remove_annotations=True),
                batch_size=2,
                decode_workers=workers,
            )
        )

    in_thread, in_processes = batches(0), batches(2)

    assert [b.paths for b in in_processes] == [b.paths for b in in_thread] and sum(
        len(b.paths) for b in in_thread
    ) == 5
    for threaded, pooled in zip(in_thread, in_processes, strict=True):
        assert np.array_equal(pooled.images, threaded.images)
        assert pooled.failures == threaded.failures and pooled.skipped == threaded.skipped
    assert any("bad" in failure.path for b in in_processes for failure in b.failures)


@pytest.mark.parametrize(
    ("device", "cores", "workers"),
    [
        ("cpu", 2, 0),
        ("cpu", 4, 0),
        ("cpu", 8, 2),
        ("cpu", 64, 4),
        ("cuda", 2, 0),
        ("cuda", 6, 3),
        ("cuda", 16, 8),
        ("cuda", 64, 8),
    ],
)
def test_default_decode_workers_use_the_cores_the_network_leaves(device, cores, workers):
    assert stream.default_decode_workers(device, cores) == workers


def test_the_python_api_decodes_in_a_thread_unless_asked(predictor):
    assert Predictor(predictor.model, predictor.card, device="cpu").decode_workers == 0


def test_decode_workers_cannot_be_negative(predictor):
    with pytest.raises(OptionError, match="^decode_workers must be 0 or more; got -1$"):
        Predictor(predictor.model, predictor.card, device="cpu", decode_workers=-1)


def test_a_volume_over_the_voxel_budget_is_a_failure_and_the_stream_goes_on(tmp_path):
    """``predict``'s decoded-memory budget per study (--max-voxels), read from the header
    before decoding (issue 15)."""
    from volumes import chest_phantom, write_nifti

    hu = chest_phantom(6, 64, range(1, 5))
    write_nifti(tmp_path / "a_big.nii.gz", hu)
    write_nifti(tmp_path / "b_small.nii.gz", hu[:3])
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(tmp_path / "c.png")

    batches = list(
        iter_slice_batches(
            [tmp_path], preprocessing=Preprocessing(image_size=32), batch_size=4, max_voxels=3 * 64 * 64
        )
    )

    failures = [f for batch in batches for f in batch.failures]
    assert [(f.path, f.reason) for f in failures] == [
        (
            str(tmp_path / "a_big.nii.gz"),
            (
                f"decoding it would bring this study to {6 * 64 * 64:,} "
                f"voxels, over the {3 * 64 * 64:,}-voxel budget per study; "
                "raise --max-voxels if the study is genuine and the machine has the memory (4 bytes a voxel)"
            ),
        )
    ]
    assert [v.n_slices for batch in batches for v in batch.volumes] == [3]
    assert [p.name for batch in batches for p in batch.paths] == ["c.png"]


def test_computed_ahead_computes_the_items_in_another_thread_in_order():
    """The next batch is prepared in a thread while the caller runs the network on the current one."""
    computed_in = []

    def items():
        for k in range(3):
            computed_in.append(threading.current_thread().name)
            yield k

    assert list(computed_ahead(items())) == [0, 1, 2]
    assert len(computed_in) == 3 and all(name.startswith("covidct-prepare") for name in computed_in)


def test_computed_ahead_prepares_two_items_while_the_caller_holds_one():
    """The thread does not wait for the caller to finish a batch before starting the one after next."""
    computed = []

    def items():
        for k in range(5):
            computed.append(k)
            yield k

    got = computed_ahead(items())
    assert next(got) == 0
    deadline = time.monotonic() + 10
    while len(computed) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # and no further than that
    assert computed == [0, 1, 2]
    assert list(got) == [1, 2, 3, 4]


def test_computed_ahead_raises_an_error_of_the_producer_where_its_item_is_reached():
    def items():
        yield "first"
        raise ValueError("slice 2 cannot be prepared")

    got = computed_ahead(items())
    assert next(got) == "first"
    with pytest.raises(ValueError, match="slice 2 cannot be prepared"):
        next(got)
