"""The MoCo views of a CT slice: two different crops of one gray slice, the shape the network takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import synthetic_ct_slice

from covidct.preprocess.augment import TwoViews, contrastive_augmentation


@pytest.mark.parametrize("seed", range(5))
def test_two_views_of_a_slice_are_two_different_gray_crops_of_its_size_in_range(seed):
    torch.manual_seed(seed)
    gray = synthetic_ct_slice(np.random.default_rng(seed), is_covid=True)
    image = torch.from_numpy(gray).float().div(255).unsqueeze(0)  # (1, 64, 64) in [0, 1]

    views = TwoViews(contrastive_augmentation(64))(image)

    assert views.shape == (2, 64, 64) and views.dtype == torch.float32
    assert not torch.equal(views[0], views[1])
    assert 0.0 <= float(views.min()) and float(views.max()) <= 1.0
