"""--frozen-views: the frozen layers run once, and the trained part computes what the whole network would.

A random ResNet-50 at 64 px in fp32 (no bf16), so cached and uncached paths can be compared exactly.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from covidct.data.manifest import read_manifest
from covidct.errors import OptionError
from covidct.model.forward import predict_logits
from covidct.model.network import TrainLayers, build_resnet50, set_trainable
from covidct.model.pretrained import resolve_pretrained
from covidct.preprocess.augment import train_augmentation
from covidct.preprocess.transforms import Preprocessing, normalize
from covidct.train.config import TrainConfig
from covidct.train.distributed import World
from covidct.train.frozen_cache import (
    CachedViews,
    TrainableTail,
    cache_frozen_views,
    run_tail,
    run_trunk,
    tail_logits,
    trunk_outputs,
)
from covidct.train.trainer import fit

SIZE = 64
CPU = torch.device("cpu")
PREPROCESSING = Preprocessing(image_size=SIZE)
TRUNK_SHAPES = {
    TrainLayers.LAYER4: (1024, SIZE // 16, SIZE // 16),
    TrainLayers.LAYER3: (512, SIZE // 8, SIZE // 8),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_resnet50(num_classes=2).eval()


@pytest.fixture(scope="module")
def slices():
    return torch.rand(5, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("train_layers", [TrainLayers.LAYER4, TrainLayers.LAYER3])
def test_trunk_then_tail_is_the_whole_network(model, slices, train_layers):
    images = normalize(slices.unsqueeze(1), PREPROCESSING)
    with torch.inference_mode():
        trunk = run_trunk(model, images, train_layers)
        assert trunk.shape == (5, *TRUNK_SHAPES[train_layers])
        torch.testing.assert_close(run_tail(model, trunk, train_layers), model(images), rtol=0, atol=0)


@pytest.mark.parametrize("train_layers", [TrainLayers.LAYER4, TrainLayers.LAYER3])
def test_cached_validation_gives_the_uncached_logits(model, slices, train_layers):
    cached = trunk_outputs(
        model, slices, train_layers=train_layers, preprocessing=PREPROCESSING, device=CPU, use_bf16=False
    )
    uncached = predict_logits(model, slices, preprocessing=PREPROCESSING, device=CPU, use_bf16=False)

    assert cached.dtype == torch.float32
    torch.testing.assert_close(
        tail_logits(model, cached, train_layers=train_layers, device=CPU, use_bf16=False, batch_size=2),
        uncached,
    )


@pytest.mark.parametrize("train_layers", [TrainLayers.LAYER4, TrainLayers.LAYER3])
def test_the_trunk_holds_exactly_the_frozen_parameters(slices, train_layers):
    model = build_resnet50(num_classes=2)
    set_trainable(model, train_layers)
    trunk = run_trunk(model.eval(), normalize(slices.unsqueeze(1), PREPROCESSING), train_layers)
    TrainableTail(model, train_layers)(trunk).sum().backward()

    assert not trunk.requires_grad, "the trunk used a trainable parameter"
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), (
        "a trainable parameter is outside the tail"
    )


def test_cache_holds_the_asked_number_of_distinct_augmented_views(model, slices):
    torch.manual_seed(0)
    views = cache_frozen_views(
        model,
        slices,
        views=3,
        train_layers=TrainLayers.LAYER4,
        preprocessing=PREPROCESSING,
        device=CPU,
        use_bf16=False,
        augment=train_augmentation(SIZE),
        batch_size=2,
        world=World(CPU),
    )
    plain = trunk_outputs(
        model,
        slices,
        train_layers=TrainLayers.LAYER4,
        preprocessing=PREPROCESSING,
        device=CPU,
        use_bf16=False,
    )

    assert views.shape == (3, 5, *TRUNK_SHAPES[TrainLayers.LAYER4])
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    assert not torch.equal(views[0], plain), "the views were not augmented"


def test_each_slice_shows_every_view_once_in_as_many_epochs():
    views = torch.arange(3).view(3, 1, 1).expand(3, 4, 1).float()  # view v of every slice holds the number v
    dataset = CachedViews(views, torch.zeros(4, dtype=torch.long), torch.ones(4), seed=0)
    shown = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        shown.append([int(dataset[i][0]) for i in range(4)])

    assert all(sorted(column) == [0, 1, 2] for column in zip(*shown, strict=True))


def test_a_cache_that_does_not_fit_in_memory_is_refused(model, slices):
    with pytest.raises(
        OptionError,
        match=(
            r"--frozen-views 1000000000 would cache .* GiB of frozen-layer outputs for 5 training slices "
            r"at 64 px, more than half of this machine's .* GiB; lower --frozen-views or leave it at 0"
        ),
    ):
        cache_frozen_views(
            model,
            slices,
            views=10**9,
            train_layers=TrainLayers.LAYER4,
            preprocessing=PREPROCESSING,
            device=CPU,
            use_bf16=False,
            augment=train_augmentation(SIZE),
            batch_size=2,
            world=World(CPU),
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"frozen_views": -1},
            r"^frozen_views must be 0 \(off\) or a number of views; got -1$",
            id="negative",
        ),
        pytest.param(
            {"frozen_views": 4},
            r"^frozen_views caches frozen layers below trained ones: "
            r"use it with train_layers layer4 or layer3; got mode finetune train_layers all$",
            id="nothing-frozen",
        ),
        pytest.param(
            {"frozen_views": 4, "mode": "linear", "train_layers": "layer4"},
            r"use it with train_layers layer4 or layer3; got mode linear train_layers layer4$",
            id="linear-caches-anyway",
        ),
    ],
)
def test_frozen_views_options_are_checked(options, message):
    with pytest.raises(OptionError, match=message):
        TrainConfig(**options)


def test_a_run_with_frozen_views_trains_the_tail_and_says_so(tiny_dataset, random_weights, tmp_path):
    config = TrainConfig(
        image_size=SIZE, epochs=2, batch_size=16, device="cpu", train_layers="layer4", frozen_views=2
    )
    result = fit(
        read_manifest(tiny_dataset.csv),
        tmp_path / "model",
        config,
        pretrained=resolve_pretrained(random_weights),
    )
    trained, start = load_file(result.model_dir / "model.safetensors"), load_file(random_weights)

    assert result.card.training["frozen_views"] == 2
    assert torch.equal(trained["layer3.5.conv3.weight"], start["layer3.5.conv3.weight"])
    assert not torch.equal(trained["layer4.2.conv3.weight"], start["layer4.2.conv3.weight"])
