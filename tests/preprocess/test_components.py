"""The labelling the site steps and the lung selection share is scipy.ndimage.label's, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from covidct.preprocess.components import label_components


@pytest.mark.parametrize("seed", range(5))
def test_labels_and_count_match_scipy(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((97, 131)) < rng.uniform(0.3, 0.7)  # many components, odd sizes

    labels, count = label_components(mask)
    expected, expected_count = ndimage.label(mask)

    assert count == expected_count > 10
    np.testing.assert_array_equal(labels, expected)


def test_diagonal_neighbours_are_separate_components():
    """4-connected, as the body search and hole filling assume: a diagonal touch does not join."""
    mask = np.eye(4, dtype=bool)

    labels, count = label_components(mask)

    assert count == 4
    assert sorted(labels[mask]) == [1, 2, 3, 4]


def test_strided_and_edge_cases():
    """A strided view (the body search's every k-th pixel) labels as its copy; empty and full masks."""
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True

    labels, count = label_components(mask[::2, ::2])

    assert count == 1
    np.testing.assert_array_equal(labels, mask[::2, ::2].astype(np.int32))
    assert label_components(np.zeros((5, 5), dtype=bool))[1] == 0
    full_labels, full_count = label_components(np.ones((5, 5), dtype=bool))
    assert full_count == 1 and (full_labels == 1).all()
