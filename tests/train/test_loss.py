"""batch_loss and draw_mix: the weighted cross-entropy of a batch, with label smoothing and mixup."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional

from covidct.train.loss import Mix, batch_loss, draw_mix

LOGITS = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0], [1.0, 2.0]])
LABELS = torch.tensor([0, 1, 1, 0])
WEIGHTS = torch.tensor([1.0, 1.0, 3.0, 3.0])


def test_without_regularisers_it_is_the_weighted_mean_cross_entropy():
    per_slice = functional.cross_entropy(LOGITS, LABELS, reduction="none")

    assert batch_loss(LOGITS, LABELS, WEIGHTS) == pytest.approx(float((per_slice * WEIGHTS).sum() / 8))


def test_label_smoothing_raises_the_loss_of_confident_right_answers():
    confident = torch.tensor([[8.0, -8.0]])
    label, weight = torch.tensor([0]), torch.ones(1)

    plain = batch_loss(confident, label, weight)
    smoothed = batch_loss(confident, label, weight, label_smoothing=0.1)

    assert float(plain) < 1e-6
    assert float(smoothed) == pytest.approx(0.05 * 16, rel=1e-3)  # half of 0.1 on the wrong class, 16 nats


def test_a_full_share_is_no_mix():
    identity = Mix(1.0, torch.tensor([3, 2, 1, 0]))

    assert torch.equal(identity.blend(LOGITS), LOGITS)
    assert batch_loss(LOGITS, LABELS, WEIGHTS, mix=identity) == pytest.approx(
        float(batch_loss(LOGITS, LABELS, WEIGHTS))
    )


def test_a_blend_is_scored_against_both_labels_by_share_and_slice_weight():
    swap = Mix(0.25, torch.tensor([1, 0, 3, 2]))
    per_slice = functional.cross_entropy(LOGITS, LABELS, reduction="none")
    against_partner = functional.cross_entropy(LOGITS, LABELS[swap.partner], reduction="none")
    expected = (0.25 * WEIGHTS * per_slice + 0.75 * WEIGHTS[swap.partner] * against_partner).sum() / 8

    assert torch.allclose(swap.blend(LOGITS)[0], 0.25 * LOGITS[0] + 0.75 * LOGITS[1])
    assert batch_loss(LOGITS, LABELS, WEIGHTS, mix=swap) == pytest.approx(float(expected))


def test_mixup_off_or_a_single_slice_draws_no_mix():
    rng = np.random.default_rng(0)

    assert draw_mix(8, 0.0, rng) is None
    assert draw_mix(1, 0.2, rng) is None


def test_a_drawn_mix_is_a_permutation_and_repeats_with_the_seed():
    first, again = draw_mix(16, 0.2, np.random.default_rng(7)), draw_mix(16, 0.2, np.random.default_rng(7))

    assert 0.0 <= first.share <= 1.0
    assert sorted(first.partner.tolist()) == list(range(16))
    assert first.share == again.share
    assert torch.equal(first.partner, again.partner)
