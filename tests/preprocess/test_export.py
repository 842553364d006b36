"""Export variation: re-windowing and a padded circular field of view, fixed and random (training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidct.preprocess.augment import (
    Export,
    RandomExport,
    RandomNarrowWindow,
    export_as,
    train_augmentation,
)
from covidct.preprocess.site import standardise_intensity
from covidct.train.config import TrainConfig

SIZE = 64


def _ramp() -> torch.Tensor:
    """(1, SIZE, SIZE) gray levels from black to white, left to right: every level an 8-bit slice can hold."""
    return torch.linspace(0.0, 1.0, SIZE).expand(1, SIZE, SIZE).clone()


def test_the_default_export_is_the_slice_as_shipped():
    gray = _ramp()
    assert torch.equal(export_as(gray, Export()), gray)


def test_a_wider_window_turns_black_air_gray_and_compresses_the_contrast():
    out = export_as(_ramp(), Export(contrast=0.5))
    assert out[0, 0, 0] == pytest.approx(0.25) and out[0, 0, -1] == pytest.approx(0.75)


def test_a_narrower_window_clips_both_ends_and_a_brighter_level_raises_the_black_level():
    narrow = export_as(_ramp(), Export(contrast=2.0))
    assert narrow[0, 0, :10].eq(0).all() and narrow[0, 0, -10:].eq(1).all()
    assert export_as(_ramp(), Export(brightness=0.1))[0, 0, 0] == pytest.approx(0.1)


def test_the_field_of_view_pads_the_corners_and_keeps_the_middle():
    gray = torch.full((1, SIZE, 2 * SIZE), 0.3)
    out = export_as(gray, Export(fov_radius=1.0, padding=0.6))
    assert out[0, 0, 0] == pytest.approx(0.6) and out[0, -1, -1] == pytest.approx(0.6)
    assert out[0, SIZE // 2, SIZE] == pytest.approx(0.3)
    # an inscribed ellipse of a 1:2 image: the middle of each edge is still inside the field
    assert out[0, SIZE // 2, 1] == pytest.approx(0.3) and out[0, 1, SIZE] == pytest.approx(0.3)


def test_random_export_draws_every_kind_of_export_and_stays_in_range():
    torch.manual_seed(0)
    draws = [RandomExport().draw() for _ in range(400)]
    as_shipped = sum(d == Export() for d in draws)
    gray_padded = sum(d.fov_radius is not None and d.padding > 0 for d in draws)
    black_padded = sum(d.fov_radius is not None and d.padding == 0 for d in draws)
    wide = sum(d.contrast < 0.7 for d in draws)
    narrow = sum(d.contrast > 1.2 for d in draws)
    assert min(as_shipped, gray_padded, black_padded, wide, narrow) >= 20
    out = RandomExport()(_ramp())
    assert out.shape == (1, SIZE, SIZE) and 0.0 <= out.min() and out.max() <= 1.0


def test_vary_export_switches_random_export_into_the_training_augmentation():
    assert not any(isinstance(t, RandomExport) for t in train_augmentation(SIZE).transforms)
    assert any(isinstance(t, RandomExport) for t in train_augmentation(SIZE, vary_export=True).transforms)


def test_random_narrow_window_only_narrows_at_either_end_and_reaches_twice_as_narrow():
    torch.manual_seed(0)
    draws = [RandomNarrowWindow().draw() for _ in range(400)]
    assert all(0.0 <= low < high <= 1.0 and high - low >= 0.5 - 1e-6 for low, high in draws)
    as_shipped = sum(draw == (0.0, 1.0) for draw in draws)
    assert 150 <= as_shipped <= 250 and sum(high - low < 1 / 1.5 for low, high in draws) >= 40
    assert sum(low > 0.1 for low, _ in draws) >= 20 and sum(high < 0.9 for _, high in draws) >= 20
    # a narrower window turns the ends of the ramp black and white, where the slice had gray
    clipped = [RandomNarrowWindow(p=1.0)(_ramp()) for _ in range(20)]
    assert all(
        out.eq(0).sum() + out.eq(1).sum() > _ramp().eq(0).sum() + _ramp().eq(1).sum() for out in clipped
    )


def test_a_standardised_narrower_export_is_the_slice_stretched_from_black_as_random_narrow_window_draws():
    """Gray levels 0.2-1.0 with the bone white, as UCSD figures are saved: exported 1.5x narrower and
    standardised, the slice is stretched from black and clipped at white (the form ``RandomNarrowWindow``
    draws), not narrowed around the middle gray (its form before 2026-12-07), which darkens the lungs."""
    gray = torch.linspace(0.2, 1.2, SIZE).clamp(max=1.0).expand(SIZE, SIZE).clone()
    field = np.ones((SIZE, SIZE), bool)
    shipped = torch.from_numpy(standardise_intensity(gray.numpy(), field))
    narrower = torch.from_numpy(standardise_intensity(export_as(gray, Export(contrast=1.5)).numpy(), field))
    unclipped = (shipped > 0.05) & (narrower < 0.95)
    high = float((shipped[unclipped] / narrower[unclipped]).median())
    assert 0.5 <= high < 1 / 1.2
    assert (shipped / high).clamp(0.0, 1.0).sub(narrower).abs().max() < 0.02
    assert ((shipped - 0.5) * 1.5 + 0.5).clamp(0.0, 1.0).sub(narrower).abs().mean() > 0.05


def test_narrow_windows_switches_random_narrow_window_into_the_training_augmentation_and_the_card():
    for light in (False, True):
        assert not any(
            isinstance(t, RandomNarrowWindow) for t in train_augmentation(SIZE, light=light).transforms
        )
        transforms = train_augmentation(SIZE, light=light, narrow_windows=True).transforms
        assert any(isinstance(t, RandomNarrowWindow) for t in transforms)
    assert TrainConfig(narrow_windows=True).to_dict()["narrow_windows"] is True
    assert TrainConfig(narrow_windows=False).to_dict()["narrow_windows"] is False


@pytest.mark.parametrize("vary_export", [False, True])
def test_light_augmentation_moves_pixels_but_never_changes_a_gray_level(vary_export):
    torch.manual_seed(0)
    flat = torch.full((1, SIZE, SIZE), 0.4)
    full = train_augmentation(SIZE, vary_export=vary_export)
    light = train_augmentation(SIZE, light=True, vary_export=vary_export)

    assert not all(torch.allclose(full(flat), flat) for _ in range(5)), (
        "full augmentation kept the gray level"
    )
    if not vary_export:
        assert all(torch.allclose(light(flat), flat) for _ in range(20))
        assert not torch.equal(light(_ramp()), _ramp()), "light augmentation did not move the slice"
    else:  # the export variation still re-windows and pads
        assert not all(torch.allclose(light(flat), flat) for _ in range(20))


def test_the_config_records_the_switches_and_fill_padding_reaches_the_card_preprocessing():
    config = TrainConfig(vary_export=True, fill_padding=True)
    assert config.to_dict()["vary_export"] is True
    assert config.preprocessing.fill_padding is True
