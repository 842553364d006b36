"""Loss weights over (source, class) cells: each cell weighs the same, so the source is no
shortcut to the label."""

from __future__ import annotations

import pytest
import torch

from covidct.train.epochs import cell_weights


@pytest.mark.parametrize(
    ("labels", "sources", "expected"),
    [
        pytest.param(
            [0, 0, 0, 1], [None] * 4, [2 / 3, 2 / 3, 2 / 3, 2.0], id="no-sources-is-class-weighting"
        ),
        pytest.param([0, 1, 0, 1], ["a", "a", "b", "b"], [1.0, 1.0, 1.0, 1.0], id="balanced"),
        # source a: 3 COVID, 1 non-COVID; source b: 1 and 1 -> 4 cells, 6 slices, weight 6 / (4 * n_cell)
        pytest.param(
            [1, 1, 1, 0, 1, 0],
            ["a", "a", "a", "a", "b", "b"],
            [0.5, 0.5, 0.5, 1.5, 1.5, 1.5],
            id="imbalanced-sources",
        ),
    ],
)
def test_cell_weights(labels, sources, expected):
    weights = cell_weights(torch.tensor(labels), sources)
    assert weights.tolist() == pytest.approx(expected)
    cell_totals = {}
    for weight, cell in zip(weights.tolist(), zip(sources, labels, strict=True), strict=True):
        cell_totals[cell] = cell_totals.get(cell, 0.0) + weight
    assert len({round(total, 6) for total in cell_totals.values()}) == 1
