"""Write an ``AuditResult`` as ``audit.json`` (fixed keys, for tools) and a self-contained ``audit.html``.

The HTML carries no external CSS, JS or images: duplicate thumbnails are inline base64 PNGs, so the one
file can be mailed or archived and still opens offline. Every value from the data (paths, class names,
messages) is HTML-escaped, since file names are user input.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from string import Template

from covidct.data.audit import SHORTCUT_AUC, AuditResult, DuplicateCluster
from covidct.errors import InputError, OptionError
from covidct.html_page import html_page
from covidct.io.images import read_grayscale
from covidct.png import gray_image, png_bytes

THUMBNAIL_PX = 96
THUMBNAIL_CLUSTERS = 6
_THUMBNAILS_PER_CLUSTER = 4


def write_audit(out_dir: str | Path, result: AuditResult) -> tuple[Path, Path]:
    """Write ``audit.json`` and ``audit.html`` into ``out_dir`` (created if needed); return both paths.

    Thumbnails are shown for the first ``THUMBNAIL_CLUSTERS`` duplicate clusters (cross-class ones
    first), decoded again through ``read_grayscale`` so they show what the model sees.

    Raises:
        OptionError: ``out_dir`` exists and is not a folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(
            "--out exists and is not a folder; name a new or existing folder for the audit", path=out_dir
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "audit.json", out_dir / "audit.html"
    json_path.write_text(
        json.dumps(result.to_json_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    body = _BODY.substitute(
        dataset=html.escape(str(result.root)),
        summary=html.escape(
            f"{result.n_images} images, {len(result.failures)} "
            f"unreadable; classes {', '.join(result.classes)} "
            f"(positive: {result.positive_class}); splits: {result.split_source}."
        ),
        findings=_findings_table(result),
        attributes=_attributes_table(result),
        balance=_balance_table(result),
        clusters=_clusters_section(result),
    )
    html_path.write_text(html_page("covidct data audit", body, extra_css=_EXTRA_CSS), encoding="utf-8")
    return json_path, html_path


def _findings_table(result: AuditResult) -> str:
    rows = "".join(
        f"<tr class='{html.escape(f.severity.value)}'>"
        f"<td>{html.escape(f.severity.value)}</td><td>{html.escape(f.code)}</td>"
        f"<td>{html.escape(f.message)}</td></tr>"
        for f in result.findings
    )
    return f"<table><tr><th>Severity</th><th>Check</th><th>Finding</th></tr>{rows}</table>"


def _attributes_table(result: AuditResult) -> str:
    rows = []
    for attribute in result.attributes:
        auc = "undefined" if math.isnan(attribute.auc) else f"{attribute.auc:.3f}"
        if attribute.kind == "categorical":
            detail = "; ".join(
                f"{category}: " + ", ".join(f"{n} {c}" for c, n in counts.items())
                for category, counts in attribute.counts.items()
            )
        else:
            detail = "median " + ", ".join(f"{value:g} ({c})" for c, value in attribute.medians.items())
        flag = "shortcut" if attribute.is_shortcut else ""
        cells = (attribute.name, attribute.kind, auc, flag, detail)
        rows.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>")
    return (
        "<p class='small'>AUC of each attribute alone for predicting "
        f"{html.escape(result.positive_class)}, in [0.5, 1]; "
        f"flagged at {SHORTCUT_AUC:.2f} or more. Categorical "
        "attributes: mean AUC over 5 stratified folds of the "
        "category's positive rate measured on the other folds; "
        "numeric ones: max(AUC, 1 &minus; AUC) of the raw value.</p>"
        "<table><tr><th>Attribute</th><th>Kind</th><th>AUC</th>"
        f"<th></th><th>By class</th></tr>{''.join(rows)}</table>"
    )


def _balance_table(result: AuditResult) -> str:
    header = "".join(f"<th>{html.escape(name)}</th>" for name in result.classes)
    rows = "".join(
        f"<tr><td>{html.escape(split)}</td>"
        + "".join(f"<td>{counts[name]}</td>" for name in result.classes)
        + "</tr>"
        for split, counts in result.class_balance.items()
    )
    return f"<table><tr><th>Split</th>{header}</tr>{rows}</table>"


def _clusters_section(result: AuditResult) -> str:
    if not result.clusters:
        return "<p>No exact or near duplicates found.</p>"
    shown = [_cluster_html(result, cluster) for cluster in result.clusters[:THUMBNAIL_CLUSTERS]]
    rest = len(result.clusters) - len(shown)
    note = f"<p class='small'>{rest} more clusters are listed in audit.json.</p>" if rest > 0 else ""
    return "".join(shown) + note


def _cluster_html(result: AuditResult, cluster: DuplicateCluster) -> str:
    tags = ["exact" if cluster.is_exact else "near"]
    tags += ["spans classes"] * cluster.spans_labels + ["spans splits"] * cluster.spans_splits
    figures = []
    for path, label, split in list(zip(cluster.paths, cluster.labels, cluster.splits, strict=True))[
        :_THUMBNAILS_PER_CLUSTER
    ]:
        caption = f"{result.display_path(path)} ({label}, {split or 'no split'})"
        figures.append(
            f"<figure>{_thumbnail_html(path, caption)}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    more = len(cluster.paths) - _THUMBNAILS_PER_CLUSTER
    extra = f"<p class='small'>and {more} more images</p>" if more > 0 else ""
    return (
        f"<div class='cluster'><h3>{html.escape(', '.join(tags))} "
        f"({len(cluster.paths)} images)</h3>{''.join(figures)}{extra}</div>"
    )


def _thumbnail_html(path: Path, caption: str) -> str:
    """An inline PNG of the image as the model sees it (grayscale), at most THUMBNAIL_PX on a side."""
    try:
        gray = read_grayscale(path)
    except InputError as error:
        return f"<span class='warn'>cannot show: {html.escape(error.reason)}</span>"
    image = gray_image(gray)
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    data = base64.b64encode(png_bytes(image)).decode("ascii")
    return f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"


_EXTRA_CSS = """
tr.warning td:first-child { color: #8a4b00; font-weight: bold; }
.cluster { border-top: 1px solid #ddd; margin-top: 0.8rem; }
figure { display: inline-block; margin: 0.4rem; max-width: 12rem; vertical-align: top; }
figcaption { font-size: 0.8rem; overflow-wrap: anywhere; }
"""

_BODY = Template("""<p>Dataset: <code>$dataset</code></p>
<p>$summary</p>
<h2>Findings</h2>
$findings
<h2>Attributes that could predict the label (shortcuts)</h2>
$attributes
<h2>Class balance per split</h2>
$balance
<h2>Duplicate clusters</h2>
$clusters
""")
