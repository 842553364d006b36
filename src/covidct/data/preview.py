"""Before/after pictures of the slice pipeline on a sample of a dataset: see what the site
steps do before training."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from covidct.data.manifest import read_manifest
from covidct.errors import InputError
from covidct.html_page import html_page
from covidct.io.discover import Discovered, VolumeInput, discover_images
from covidct.io.failures import InputFailure
from covidct.io.images import read_grayscale
from covidct.io.readers import is_volume_path, read_path_volumes, read_volume
from covidct.preprocess.lung_slices import lung_slice_indices
from covidct.preprocess.pipeline import prepare_slice
from covidct.preprocess.transforms import Preprocessing
from covidct.preprocess.window import HuWindow, window_hu

INDEX_FILE = "index.html"
_GAP_PX = 4


@dataclass(frozen=True)
class Preview:
    """Where the preview is, one before|after PNG per sampled slice, and the inputs that gave none."""

    index_path: Path
    pairs: list[Path]
    failures: list[InputFailure]
    skipped: list[InputFailure]


def write_preview(
    data: Path,
    out_dir: Path,
    preprocessing: Preprocessing,
    *,
    n: int = 16,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Preview:
    """Sample ``n`` inputs of ``data`` (a folder, a file or a CSV manifest); write before|after PNGs and an
    index.html to ``out_dir``.

    An input is an image file or a CT volume (DICOM series, NIfTI file), shown by its middle lung
    slice in the card's HU window. "Before" is the whole slice resized (every site step off), "after"
    is what ``preprocessing`` feeds the network, through the same ``prepare_slice`` as training and
    inference. Inputs that fail to decode are listed in the page and returned.

    Raises:
        InputError: ``data`` does not exist or holds no image file or volume.
    """
    if not Path(data).exists():
        raise InputError(
            "not found; expected a folder of CT slice images or volumes, one file or a CSV manifest",
            path=data,
        )
    found = _manifest_images(Path(data)) if Path(data).suffix.lower() == ".csv" else discover_images([data])
    inputs: list[Path | VolumeInput] = [*found.paths, *found.volumes]
    if not inputs:
        raise InputError(
            f"no image file or volume found ({len(found.failures)} failed, {len(found.skipped)} skipped)",
            path=data,
        )
    chosen = [
        inputs[i]
        for i in sorted(
            np.random.default_rng(seed).choice(len(inputs), size=min(n, len(inputs)), replace=False)
        )
    ]
    plain = replace(preprocessing, crop_field=False, remove_annotations=False, standardise_intensity=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    captions, pairs, failures = [], [], list(found.failures)
    for done, item in enumerate(chosen, start=1):
        try:
            gray, caption = _preview_slice(item, preprocessing.hu_window)
        except InputError as error:
            failures.append(InputFailure.from_error(error, _source(item)))
        else:
            pair = out_dir / f"{len(pairs):03d}_{Path(_source(item)).stem}.png"
            Image.fromarray(
                _side_by_side(prepare_slice(gray, plain), prepare_slice(gray, preprocessing))
            ).save(pair)
            captions.append(caption)
            pairs.append(pair)
        if progress:
            progress(done, len(chosen))
    index_path = out_dir / INDEX_FILE
    index_path.write_text(
        _index_html(data, preprocessing, captions, pairs, failures, found.skipped, total=len(inputs)),
        encoding="utf-8",
    )
    return Preview(index_path, pairs, failures, found.skipped)


def _preview_slice(item: Path | VolumeInput, window: HuWindow) -> tuple[np.ndarray, str]:
    """(H, W) float32 slice in [0, 1] and its caption: an image file itself, or a volume's middle lung slice.

    A manifest path naming a folder with several DICOM series is previewed by its first series.

    Raises:
        InputError: the input cannot be read, or a volume shows no lung.
    """
    if isinstance(item, Path) and not is_volume_path(item):
        return read_grayscale(item), str(item)
    volume = read_volume(item) if isinstance(item, VolumeInput) else read_path_volumes(item)[0]
    lung = lung_slice_indices(volume)
    middle = int(lung[len(lung) // 2])
    return window_hu(volume.hu[[middle]], window)[
        0
    ], f"{volume.source} (lung slice {middle + 1} of {volume.n_slices})"


def _source(item: Path | VolumeInput) -> str:
    return str(item) if isinstance(item, Path) else item.source


def _manifest_images(csv_path: Path) -> Discovered:
    """The rows of a CSV manifest (default column names), as discovered files (a volume
    row's path is read as one)."""
    return Discovered([sample.path for sample in read_manifest(csv_path).samples], [], [])


def _side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(S, 2S + gap) uint8: ``before`` and ``after`` (both (S, S) in [0, 1]) with a white gap between them."""
    gap = np.ones((before.shape[0], _GAP_PX), np.float32)
    return (np.concatenate([before, gap, after], axis=1) * 255).round().astype(np.uint8)


def _index_html(
    data: Path,
    preprocessing: Preprocessing,
    captions: list[str],
    pairs: list[Path],
    failures: list[InputFailure],
    skipped: list[InputFailure],
    *,
    total: int,
) -> str:
    steps = (
        ", ".join(
            name
            for name in ("remove_annotations", "crop_field", "standardise_intensity")
            if getattr(preprocessing, name)
        )
        or "none"
    )
    figures = "".join(
        f"<figure><img src='{html.escape(pair.name)}' alt='{html.escape(pair.stem)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, pair in zip(captions, pairs, strict=True)
    )
    unused = "".join(
        f"<li>{html.escape(f.path)}: {html.escape(f.reason)} ({kind})</li>"
        for kind, items in (("failed", failures), ("skipped", skipped))
        for f in items
    )
    body = (
        f"<p>{len(pairs)} of {total} inputs under {html.escape(str(data))} "
        "(a volume by its middle lung slice), each shown as the whole "
        f"slice resized (left) and as the network sees it (right). Site steps on: {html.escape(steps)}; "
        f"{preprocessing.image_size} x {preprocessing.image_size} px.</p>{figures}"
        + (f"<h2>Not shown</h2><ul>{unused}</ul>" if unused else "")
    )
    return html_page(
        "covidct preprocessing preview",
        body,
        extra_css=(
            "figure { display: inline-block; margin: 0.4rem; } figcaption { "
            "font-size: 0.75rem; max-width: 30rem; overflow-wrap: anywhere; }"
        ),
    )
