"""Before training, find what could make a model's numbers lie: shortcuts, duplicates, leaks, imbalance.

``audit_manifest`` checks four things:

- shortcuts: file attributes (format, extension, colour mode, bit depth, size, aspect ratio) that
  predict the label on their own, each scored by a ROC-AUC;
- exact and near duplicates (a perceptual hash of what the model sees), above all across classes
  and across splits;
- patients (groups) in several splits, and missing patient ids;
- class balance per split.

Each image is decoded once through ``read_grayscale``, so the hash sees what the model sees, and its
attributes come from the Pillow header. An unreadable file becomes a finding, never a crash. The
result is plain data: ``covidct.data.audit_report`` writes it, the CLI prints it.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from covidct.data.manifest import SPLITS, Manifest
from covidct.data.splits import assign_splits
from covidct.errors import InputError, OptimisticMetricsWarning
from covidct.io.failures import InputFailure
from covidct.io.images import read_grayscale
from covidct.io.readers import is_volume_path

# An attribute that alone separates the classes with ROC-AUC >= 0.70 ("acceptable discrimination",
# Hosmer & Lemeshow, Applied Logistic Regression, 2000) is flagged: a CNN picks up much weaker cues than
# that (JPEG blocks, resize blur, padding) when they come for free.
SHORTCUT_AUC = 0.70
# The hash keeps the 16 x 16 lowest DCT frequencies of a 64 x 64 copy: 256 bits. 64 bits (8 x 8) are too
# few for CT: every axial slice is a body ellipse with two lungs, and on UCSD unrelated slices came within
# 4 bits of each other, as close as the known duplicates. With 256 bits the two re-cropped UCSD
# cross-label copies differ by 16 and 24 bits, consecutive slices of one scan by 10-44, and slices of
# different patients by 44 or more; 32 bits (12.5%) sits in that gap.
HASH_BITS = 256
NEAR_DUPLICATE_BITS = 32
_HASH_INPUT_PX = 64
_HASH_SIDE = 16
# A split with 3 or more images of its largest class per image of its smallest: a constant guess already
# scores 75% accuracy there.
IMBALANCE_RATIO = 3.0
# Categorical attributes are scored out of fold (see categorical_shortcut_auc): a category's positive
# rate is measured on the other folds and pulled toward the overall rate by this many pseudo-images, so a
# category seen in one image only scores the overall rate, not its own label. Measured in-sample instead,
# 75 categories of 10 images with random labels already reach AUC 0.67.
_FOLDS = 5
_PRIOR_IMAGES = 1.0

_ATTRIBUTE_NAMES = {
    "format": "file format (as Pillow reads the bytes)",
    "extension": "file extension",
    "mode": "colour mode",
    "bit_depth": "bit depth per channel",
    "width": "image width (px)",
    "height": "image height (px)",
    "pixels": "pixel count",
    "aspect_ratio": "aspect ratio (width / height)",
}
_CATEGORICAL = ("format", "extension", "mode", "bit_depth")
_BITS_PER_CHANNEL = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


class Severity(StrEnum):
    """How much a finding matters: a warning can make the metrics lie; info is context."""

    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One thing the audit saw, as a one-line message that names its numbers."""

    severity: Severity
    code: str
    message: str


@dataclass(frozen=True)
class AttributeAuc:
    """How well one file attribute predicts the positive class on its own.

    ``auc`` is in [0.5, 1] (NaN when a class has too few readable images); ``counts`` (categorical
    attributes) maps category -> class -> images; ``medians`` (numeric ones) maps class -> median value.
    """

    name: str
    kind: str
    auc: float
    counts: dict[str, dict[str, int]]
    medians: dict[str, float]

    @property
    def is_shortcut(self) -> bool:
        return not math.isnan(self.auc) and self.auc >= SHORTCUT_AUC


@dataclass(frozen=True)
class DuplicateCluster:
    """Images that are copies of each other: all identical (``is_exact``) or linked by
    near-identical hashes."""

    paths: tuple[Path, ...]
    labels: tuple[str, ...]
    splits: tuple[str | None, ...]
    groups: tuple[str | None, ...]
    is_exact: bool

    @property
    def spans_labels(self) -> bool:
        return len(set(self.labels)) > 1

    @property
    def spans_splits(self) -> bool:
        return len({split for split in self.splits if split is not None}) > 1


@dataclass(frozen=True)
class AuditResult:
    """What ``audit_manifest`` found; ``warnings`` are the findings ``train`` prints."""

    root: Path
    n_images: int
    classes: tuple[str, ...]
    positive_class: str
    split_source: str
    class_balance: dict[str, dict[str, int]]
    attributes: tuple[AttributeAuc, ...]
    clusters: tuple[DuplicateCluster, ...]
    failures: tuple[InputFailure, ...]
    findings: tuple[Finding, ...]

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(finding for finding in self.findings if finding.severity is Severity.WARNING)

    def display_path(self, path: Path | str) -> str:
        """``path`` relative to the dataset folder when it lies inside it, as reports show it."""
        return _relative(path, self.root)

    def to_json_dict(self) -> dict:
        """A JSON-ready dict with a fixed set of keys; undefined AUCs are null."""
        return {
            "dataset": str(self.root),
            "n_images": self.n_images,
            "n_unreadable": len(self.failures),
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "split_source": self.split_source,
            "thresholds": {
                "shortcut_auc": SHORTCUT_AUC,
                "hash_bits": HASH_BITS,
                "near_duplicate_bits": NEAR_DUPLICATE_BITS,
                "imbalance_ratio": IMBALANCE_RATIO,
            },
            "findings": [
                {"severity": f.severity.value, "code": f.code, "message": f.message} for f in self.findings
            ],
            "attributes": [
                {
                    "name": a.name,
                    "description": _ATTRIBUTE_NAMES[a.name],
                    "kind": a.kind,
                    "auc": None if math.isnan(a.auc) else round(a.auc, 4),
                    "is_shortcut": a.is_shortcut,
                    "counts": a.counts,
                    "medians": a.medians,
                }
                for a in self.attributes
            ],
            "class_balance": self.class_balance,
            "duplicate_clusters": [
                {
                    "kind": "exact" if c.is_exact else "near",
                    "spans_labels": c.spans_labels,
                    "spans_splits": c.spans_splits,
                    "members": [
                        {"path": self.display_path(p), "label": label, "split": split, "group": group}
                        for p, label, split, group in zip(c.paths, c.labels, c.splits, c.groups, strict=True)
                    ],
                }
                for c in self.clusters
            ],
            "unreadable": [{"path": self.display_path(f.path), "reason": f.reason} for f in self.failures],
        }


@dataclass(frozen=True)
class _ImageFacts:
    attributes: dict[str, str | float]
    file_sha256: str
    pixel_sha256: str
    phash: np.ndarray


def audit_manifest(manifest: Manifest, *, progress: Callable[[int, int], None] | None = None) -> AuditResult:
    """Decode every image of ``manifest`` once and return what could make metrics on it lie.

    Splits are the manifest's own when every sample has one (a split column, or a manifest that
    ``assign_splits`` already split); otherwise they are made as ``assign_splits`` makes them with its
    defaults (15% val, 15% test, seed 0), and ``split_source`` says which. Unreadable images become
    warnings and are left out of the attribute and duplicate checks, as training leaves them out.

    Args:
        manifest: the dataset, as ``read_manifest`` returns it.
        progress: called with (images done, images in all) after each image.
    """
    facts, failures = _inspect_all(manifest, progress)
    splits, split_source = _splits_of(manifest)
    readable = [index for index, fact in enumerate(facts) if fact is not None]
    attributes = _score_attributes(manifest, [facts[i] for i in readable], readable)
    clusters = _duplicate_clusters(manifest, facts, readable, splits)
    balance = _class_balance(manifest, splits)
    root = manifest.origin if manifest.origin.is_dir() else manifest.origin.parent
    findings = [
        Finding(
            Severity.WARNING,
            "unreadable",
            f"{_relative(f.path, root)}: {f.reason}; left out of these checks and of training",
        )
        for f in failures
    ]
    findings += [_shortcut_finding(a, manifest) for a in attributes if a.is_shortcut]
    findings += _duplicate_findings(clusters, root)
    findings += _patient_findings(manifest, splits)
    findings += _balance_findings(balance)
    findings.sort(key=lambda finding: finding.severity is not Severity.WARNING)
    return AuditResult(
        root,
        len(manifest.samples),
        manifest.classes,
        manifest.positive_class,
        split_source,
        balance,
        tuple(attributes),
        tuple(clusters),
        tuple(failures),
        tuple(findings),
    )


def perceptual_hash(gray: np.ndarray) -> np.ndarray:
    """Return the 256-bit DCT hash of a (H, W) float32 image as (32,) uint8, bits packed.

    The image is box-averaged to 64 x 64 (size and aspect ratio drop out), its 16 x 16 lowest
    (unnormalised) DCT-II frequencies kept, and each bit says whether a coefficient is above their
    median. Scaling or shifting intensities barely moves it; on real CT slices a 20% brighter copy
    differs by at most 20 bits, a 0.6x resize by 12, a JPEG re-encode by 2. Cropping is its blind spot:
    trimming 3% off each side changes 54-90 bits, so re-cropped copies are found only when the crops
    differ by a percent or two (the UCSD cross-label copies do).
    """
    small = np.asarray(
        Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32)).resize(
            (_HASH_INPUT_PX, _HASH_INPUT_PX), Image.Resampling.BOX
        ),
        dtype=np.float64,
    )
    n = _HASH_INPUT_PX
    frequency, position = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    dct = np.cos(np.pi * (2 * position + 1) * frequency / (2 * n))
    low = (dct @ small @ dct.T)[:_HASH_SIDE, :_HASH_SIDE].ravel()
    return np.packbits(low > np.median(low))


def hamming_bits(one: np.ndarray, many: np.ndarray) -> np.ndarray:
    """Differing bits between packed hash ``one`` (B,) and each row of ``many`` (N, B): (N,) int."""
    popcount = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)
    return popcount[np.bitwise_xor(one, many)].sum(axis=-1)


def categorical_shortcut_auc(values: Sequence[str], is_positive: np.ndarray) -> float:
    """Cross-validated ROC-AUC of an image's category positive rate as a score for the label.

    Five stratified folds (fewer when a class has fewer images), seed 0. Each held-out fold is scored
    with the rates of the other folds, smoothed toward the overall rate, and the per-fold AUCs are
    averaged: a category unique to one image scores the overall rate, so it cannot fake an AUC of 1.0,
    and images of one category stay tied within a fold, so fold-to-fold noise in the rates is not read
    as signal (pooling the folds' scores into one AUC would). Returns a value in [0.5, 1] (below 0.5
    only means the categories carry nothing), or NaN with under two images in a class.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    categories, codes = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    n_folds = min(_FOLDS, int(is_positive.sum()), int((~is_positive).sum()))
    if n_folds < 2:
        return math.nan
    if len(categories) < 2:
        return 0.5
    prior, aucs = is_positive.mean(), []
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=0)
    for fit, held_out in folds.split(codes, is_positive):
        positives = np.bincount(codes[fit], weights=is_positive[fit], minlength=len(categories))
        images = np.bincount(codes[fit], minlength=len(categories))
        rates = (positives + _PRIOR_IMAGES * prior) / (images + _PRIOR_IMAGES)
        aucs.append(roc_auc_score(is_positive[held_out], rates[codes[held_out]]))
    return max(float(np.mean(aucs)), 0.5)


def numeric_shortcut_auc(values: Sequence[float], is_positive: np.ndarray) -> float:
    """max(AUC, 1 - AUC) of the raw value as a score: either direction is a shortcut. NaN with one class."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return math.nan
    auc = float(roc_auc_score(is_positive, np.asarray(values, dtype=np.float64)))
    return max(auc, 1.0 - auc)


def _inspect_all(manifest: Manifest, progress) -> tuple[list[_ImageFacts | None], list[InputFailure]]:
    facts, failures = [], []
    for done, sample in enumerate(manifest.samples, start=1):
        try:
            facts.append(_inspect(sample.path))
        except InputError as error:
            facts.append(None)
            failures.append(InputFailure(str(sample.path), error.reason))
        if progress is not None:
            progress(done, len(manifest.samples))
    return facts, failures


def _inspect(path: Path) -> _ImageFacts:
    if is_volume_path(path):
        # File attributes and perceptual hashes describe 2-D image files; a volume's
        # slices are windowed from HU.
        raise InputError(
            "a CT volume (DICOM or NIfTI): the audit checks 2-D image files only, so this row is not audited",
            path=path,
        )
    gray = read_grayscale(path)
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        (width, height), mode, file_format = image.size, image.mode, image.format or "unknown"
    attributes = {
        "format": file_format,
        "extension": path.suffix.lower() or "(none)",
        "mode": mode,
        "bit_depth": str(_BITS_PER_CHANNEL.get(mode, 8)),
        "width": float(width),
        "height": float(height),
        "pixels": float(width * height),
        "aspect_ratio": width / height,
    }
    pixels = hashlib.sha256(f"{gray.shape}".encode() + gray.tobytes()).hexdigest()
    return _ImageFacts(attributes, hashlib.sha256(data).hexdigest(), pixels, perceptual_hash(gray))


def _splits_of(manifest: Manifest) -> tuple[list[str | None], str]:
    if manifest.has_splits:
        return [sample.split for sample in manifest.samples], "the manifest's splits"
    try:
        with warnings.catch_warnings():
            # The audit reports missing patient ids as its own finding; the same warning here would repeat it.
            warnings.simplefilter("ignore", OptimisticMetricsWarning)
            assigned = assign_splits(manifest)
    except InputError as error:
        return [None] * len(manifest.samples), f"none (covidct could not split this data: {error.reason})"
    return [
        sample.split for sample in assigned.samples
    ], "made as covidct makes them without a split column (15% val, 15% test, seed 0)"


def _score_attributes(manifest: Manifest, facts: list[_ImageFacts], indices: list[int]) -> list[AttributeAuc]:
    labels = [manifest.classes[manifest.samples[i].label] for i in indices]
    is_positive = np.array([label == manifest.positive_class for label in labels], dtype=bool)
    scored = []
    for name in _ATTRIBUTE_NAMES:
        values = [fact.attributes[name] for fact in facts]
        if name in _CATEGORICAL:
            counts: dict[str, dict[str, int]] = {}
            for value, label in zip(values, labels, strict=True):
                counts.setdefault(str(value), dict.fromkeys(manifest.classes, 0))[label] += 1
            auc = categorical_shortcut_auc(values, is_positive) if facts else math.nan
            scored.append(AttributeAuc(name, "categorical", auc, dict(sorted(counts.items())), {}))
        else:
            array, label_array = np.array(values, dtype=np.float64), np.array(labels)
            medians = {
                c: round(float(np.median(array[label_array == c])), 4)
                for c in manifest.classes
                if (label_array == c).any()
            }
            scored.append(
                AttributeAuc(
                    name,
                    "numeric",
                    numeric_shortcut_auc(array, is_positive) if facts else math.nan,
                    {},
                    medians,
                )
            )
    return scored


def _duplicate_clusters(
    manifest: Manifest, facts: list[_ImageFacts | None], readable: list[int], splits: list[str | None]
) -> list[DuplicateCluster]:
    """Single-linkage clusters: identical file bytes or decoded pixels, or hashes
    within NEAR_DUPLICATE_BITS."""
    exact, near = _UnionFind(len(facts)), _UnionFind(len(facts))
    for key in ("file_sha256", "pixel_sha256"):
        first_with: dict[str, int] = {}
        for index in readable:
            first = first_with.setdefault(getattr(facts[index], key), index)
            exact.union(first, index)
            near.union(first, index)
    hashes = (
        np.stack([facts[i].phash for i in readable]) if readable else np.zeros((0, HASH_BITS // 8), np.uint8)
    )
    for row in range(len(readable) - 1):
        for offset in np.flatnonzero(hamming_bits(hashes[row], hashes[row + 1 :]) <= NEAR_DUPLICATE_BITS):
            near.union(readable[row], readable[row + 1 + int(offset)])
    members = defaultdict(list)
    for index in readable:
        members[near.find(index)].append(index)
    clusters = []
    for indices in (group for group in members.values() if len(group) > 1):
        samples = [manifest.samples[i] for i in indices]
        clusters.append(
            DuplicateCluster(
                tuple(s.path for s in samples),
                tuple(manifest.classes[s.label] for s in samples),
                tuple(splits[i] for i in indices),
                tuple(s.group for s in samples),
                is_exact=len({exact.find(i) for i in indices}) == 1,
            )
        )
    return sorted(clusters, key=lambda c: (not c.spans_labels, not c.spans_splits, -len(c.paths)))


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, one: int, other: int) -> None:
        self.parent[self.find(other)] = self.find(one)


def _class_balance(manifest: Manifest, splits: list[str | None]) -> dict[str, dict[str, int]]:
    balance = {"all": manifest.class_counts()}
    for split in SPLITS:
        if split in splits:
            balance[split] = dict.fromkeys(manifest.classes, 0)
    for sample, split in zip(manifest.samples, splits, strict=True):
        if split is not None:
            balance[split][manifest.classes[sample.label]] += 1
    return balance


def _shortcut_finding(attribute: AttributeAuc, manifest: Manifest) -> Finding:
    name = _ATTRIBUTE_NAMES[attribute.name]
    if attribute.kind == "categorical":
        biggest = sorted(attribute.counts.items(), key=lambda item: -sum(item[1].values()))
        shown = "; ".join(
            f"{category}: " + " / ".join(f"{n} {c}" for c, n in counts.items())
            for category, counts in biggest[:4]
        )
        detail = shown + (f"; {len(biggest) - 4} more" if len(biggest) > 4 else "")
        how = "out-of-fold AUC"
    else:
        detail = "median " + " vs ".join(f"{value:g} for {c}" for c, value in attribute.medians.items())
        how = "AUC"
    return Finding(
        Severity.WARNING,
        "shortcut",
        f"{name} alone predicts {manifest.positive_class} ({how} "
        f"{attribute.auc:.2f} >= {SHORTCUT_AUC:.2f}): {detail}; "
        "a model can learn this instead of the anatomy, so decode and resize every class alike or balance it",
    )


def _duplicate_findings(clusters: list[DuplicateCluster], root: Path) -> list[Finding]:
    def members(cluster: DuplicateCluster) -> str:
        shown = zip(cluster.paths[:3], cluster.labels, cluster.splits, strict=False)
        text = " = ".join(
            f"{_relative(path, root)} ({label}, {split or 'no split'})" for path, label, split in shown
        )
        return text + (f" and {len(cluster.paths) - 3} more" if len(cluster.paths) > 3 else "")

    def summary(chosen: list[DuplicateCluster], what: str) -> str:
        n_exact = sum(c.is_exact for c in chosen)
        examples = "; ".join(members(cluster) for cluster in chosen[:3])
        more = f"; {len(chosen) - 3} more clusters in audit.json" if len(chosen) > 3 else ""
        return (
            f"{len(chosen)} duplicate cluster(s) ({n_exact} exact, {len(chosen) - n_exact} near; "
            f"{sum(len(c.paths) for c in chosen)} images) {what}: {examples}{more}"
        )

    findings = []
    across_labels = [c for c in clusters if c.spans_labels]
    if across_labels:
        what = (
            "hold images of more than one class; the same image cannot carry two labels, drop or relabel them"
        )
        findings.append(Finding(Severity.WARNING, "cross_label_duplicate", summary(across_labels, what)))
    across_splits = [c for c in clusters if c.spans_splits]
    if across_splits:
        findings.append(
            Finding(
                Severity.WARNING,
                "cross_split_duplicate",
                summary(
                    across_splits,
                    "span splits, so test images have copies in training and test metrics are inflated",
                ),
            )
        )
    within = [c for c in clusters if not c.spans_labels and not c.spans_splits]
    if within:
        findings.append(
            Finding(
                Severity.INFO,
                "duplicate",
                summary(within, "stay within one class and split; they add weight, not leakage"),
            )
        )
    return findings


def _patient_findings(manifest: Manifest, splits: list[str | None]) -> list[Finding]:
    findings = []
    missing = sum(sample.group is None for sample in manifest.samples)
    if missing:
        scope = (
            "no image has a"
            if missing == len(manifest.samples)
            else f"{missing} of {len(manifest.samples)} images have no"
        )
        findings.append(
            Finding(
                Severity.WARNING,
                "missing_patient_ids",
                f"{scope} patient id, so slices of one patient can sit in train and test and the metrics are "
                "optimistic; give a patient id column (--group-col)",
            )
        )
    splits_of = defaultdict(set)
    for sample, split in zip(manifest.samples, splits, strict=True):
        if sample.group is not None and split is not None:
            splits_of[sample.group].add(split)
    leaks = sorted((group, found) for group, found in splits_of.items() if len(found) > 1)
    if leaks:
        group, found = leaks[0]
        ordered = " and ".join(split for split in SPLITS if split in found)
        findings.append(
            Finding(
                Severity.WARNING,
                "patient_in_several_splits",
                f"{len(leaks)} patient(s) are in more than one split (e.g. {group} in {ordered}); "
                "fix the split column or drop --split-col to let covidct split by patient",
            )
        )
    return findings


def _balance_findings(balance: dict[str, dict[str, int]]) -> list[Finding]:
    findings = []
    for split, counts in balance.items():
        smallest, largest = min(counts, key=counts.get), max(counts, key=counts.get)
        where = "the dataset" if split == "all" else f"the {split} split"
        if counts[smallest] == 0:
            findings.append(
                Finding(
                    Severity.WARNING,
                    "class_imbalance",
                    f"{where} has no {smallest} images ({_counts_text(counts)})",
                )
            )
        elif counts[largest] / counts[smallest] >= IMBALANCE_RATIO:
            findings.append(
                Finding(
                    Severity.WARNING,
                    "class_imbalance",
                    f"{where} has {counts[largest] / counts[smallest]:.1f} "
                    f"{largest} images per {smallest} image "
                    f"({_counts_text(counts)}); accuracy there mostly "
                    f"reflects {largest}, so read sensitivity and specificity",
                )
            )
    shown = "; ".join(f"{split} {_counts_text(counts)}" for split, counts in balance.items())
    findings.append(Finding(Severity.INFO, "class_balance", f"images per class: {shown}"))
    return findings


def _relative(path: Path | str, root: Path) -> str:
    path = Path(path)
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _counts_text(counts: dict[str, int]) -> str:
    return " / ".join(f"{n} {name}" for name, n in counts.items())
