"""Before/after pictures of the slice pipeline on a sample of a dataset: see what the site steps do before training."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from covidct.data.dataset import decode_slices
from covidct.data.manifest import read_manifest
from covidct.errors import InputError
from covidct.html_page import html_page
from covidct.io.discover import Discovered, discover_images
from covidct.io.failures import InputFailure
from covidct.preprocess.transforms import Preprocessing

INDEX_FILE = "index.html"
_GAP_PX = 4


@dataclass(frozen=True)
class Preview:
    """Where the preview is, one before|after PNG per sampled slice, and the inputs that gave none."""

    index_path: Path
    pairs: list[Path]
    failures: list[InputFailure]
    skipped: list[InputFailure]


def write_preview(data: Path, out_dir: Path, preprocessing: Preprocessing, *, n: int = 16, seed: int = 0, progress: Callable[[int, int], None] | None = None) -> Preview:
    """Sample ``n`` image files of ``data`` (a folder, a file or a CSV manifest); write before|after PNGs and an index.html to ``out_dir``.

    "Before" is the whole image resized (every site step off), "after" is what ``preprocessing``
    feeds the network, through the same ``decode_slices`` as training and inference. Files that fail
    to decode are listed in the page and returned; DICOM series and NIfTI volumes are listed as
    skipped (preview their slices as image files).

    Raises:
        InputError: ``data`` does not exist or holds no image file.
    """
    if not Path(data).exists():
        raise InputError("not found; expected a folder of CT slice images, one image file or a CSV manifest", path=data)
    found = _manifest_images(Path(data)) if Path(data).suffix.lower() == ".csv" else discover_images([data])
    if not found.paths:
        raise InputError(f"no image file found ({len(found.failures)} failed, {len(found.skipped) + len(found.volumes)} skipped)", path=data)
    chosen = sorted(np.random.default_rng(seed).choice(len(found.paths), size=min(n, len(found.paths)), replace=False))
    paths = [found.paths[i] for i in chosen]
    plain = replace(preprocessing, crop_field=False, remove_annotations=False, standardise_intensity=False)
    before = decode_slices(paths, plain, progress=progress)
    after = decode_slices([paths[i] for i in before.indices], preprocessing)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for row, index in enumerate(before.indices):
        pair = out_dir / f"{row:03d}_{paths[index].stem}.png"
        Image.fromarray(_side_by_side(before.images[row].float().numpy(), after.images[row].float().numpy())).save(pair)
        pairs.append(pair)
    skipped = found.skipped + [InputFailure(volume.source, "a DICOM series or NIfTI volume; preview its slices as image files") for volume in found.volumes]
    failures = found.failures + before.failures
    index_path = out_dir / INDEX_FILE
    index_path.write_text(_index_html(data, preprocessing, [paths[i] for i in before.indices], pairs, failures, skipped, total=len(found.paths)), encoding="utf-8")
    return Preview(index_path, pairs, failures, skipped)


def _manifest_images(csv_path: Path) -> Discovered:
    """The image rows of a CSV manifest (default column names), as discovered files."""
    return Discovered([sample.path for sample in read_manifest(csv_path).samples], [], [])


def _side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(S, 2S + gap) uint8: ``before`` and ``after`` (both (S, S) in [0, 1]) with a white gap between them."""
    gap = np.ones((before.shape[0], _GAP_PX), np.float32)
    return (np.concatenate([before, gap, after], axis=1) * 255).round().astype(np.uint8)


def _index_html(data: Path, preprocessing: Preprocessing, paths: list[Path], pairs: list[Path], failures: list[InputFailure], skipped: list[InputFailure], *, total: int) -> str:
    steps = ", ".join(name for name in ("remove_annotations", "crop_field", "standardise_intensity") if getattr(preprocessing, name)) or "none"
    figures = "".join(
        f"<figure><img src='{html.escape(pair.name)}' alt='{html.escape(path.name)}'><figcaption>{html.escape(str(path))}</figcaption></figure>"
        for path, pair in zip(paths, pairs, strict=True)
    )
    unused = "".join(f"<li>{html.escape(f.path)}: {html.escape(f.reason)} ({kind})</li>" for kind, items in (("failed", failures), ("skipped", skipped)) for f in items)
    body = (
        f"<p>{len(pairs)} of {total} image files under {html.escape(str(data))}, each shown as the whole image resized "
        f"(left) and as the network sees it (right). Site steps on: {html.escape(steps)}; "
        f"{preprocessing.image_size} x {preprocessing.image_size} px.</p>{figures}"
        + (f"<h2>Not shown</h2><ul>{unused}</ul>" if unused else "")
    )
    return html_page("covidct preprocessing preview", body, extra_css="figure { display: inline-block; margin: 0.4rem; } figcaption { font-size: 0.75rem; max-width: 30rem; overflow-wrap: anywhere; }")
