import pytest
import torch

from pemn.archs import UnknownArchitectureError, create_model, list_archs, resolve_config
from pemn.errors import InvalidParameterError
from pemn.layers import maskable_layers
from pemn.testing import ARCHS, SMALL


def test_small_configs_cover_the_registry():
    assert set(SMALL) == set(list_archs())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 28, 10), (3, 32, 7)])
def test_output_shape(arch, channels, size, classes):
    model = create_model(
        arch, in_channels=channels, image_size=size, num_classes=classes, **SMALL[arch]
    ).eval()
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_maskable_layers_have_no_bias(arch):
    layers = maskable_layers(create_model(arch, **SMALL[arch]))
    assert layers
    assert all(m.bias is None for _, m in layers)


def test_unknown_arch_lists_known():
    with pytest.raises(UnknownArchitectureError) as exc:
        create_model("resnet1000")
    for name in list_archs():
        assert name in str(exc.value)
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize(
    ("arch", "config", "param"),
    [
        ("convmixer", {"width": 0}, "width"),
        ("convmixer", {"depth": -1}, "depth"),
        ("vit", {"width": 30, "heads": 4}, "width"),
        ("vit", {"patch": 5}, "patch"),
        ("mlp", {"hidden": [0]}, "hidden"),
        ("resnet20", {"num_classes": 0}, "num_classes"),
        ("convmixer", {"widht": 8}, "config key"),
        ("convmixer", {"width": 2.5}, "width"),
    ],
)
def test_bad_config_names_the_parameter(arch, config, param):
    with pytest.raises(InvalidParameterError) as exc:
        create_model(arch, **config)
    assert param in str(exc.value)
    assert "allowed" in str(exc.value)


def test_resolve_config_fills_defaults():
    cfg = resolve_config("convmixer", width=64)
    assert cfg["width"] == 64
    assert cfg["depth"] == 8 and cfg["in_channels"] == 3


def test_resnet56_counts_match_the_paper():
    layers = maskable_layers(create_model("resnet56"))
    sizes = [m.weight.numel() for _, m in layers]
    assert sum(sizes) == 848_944
    assert max(sizes) == 36_864


def test_parse_config_items_json_values_and_strings():
    from pemn.archs import parse_config_items

    got = parse_config_items(["width=128", "hidden=[64, 32]", "act=gelu", "scale=1e-2"])
    assert got == {"width": 128, "hidden": [64, 32], "act": "gelu", "scale": 0.01}
    for bad in ("width", "=3"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_config_items([bad])
