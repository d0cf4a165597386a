import pytest
import torch
from torch import nn

from pemn.archs import create_model
from pemn.bundle.bits import kept_count
from pemn.errors import InvalidParameterError
from pemn.layers import layer_specs, maskable_layers
from pemn.masking import MaskedConv2d, MaskedLinear, apply_masks, extract_masks, to_masked
from pemn.prototype import Strategy, generate
from pemn.testing import ARCHS, SMALL, STRATEGIES, strategy_id


def _masked(arch, strategy, density=0.5, seed=0):
    model = create_model(arch, in_channels=1, image_size=28, **SMALL[arch])
    fixed = generate(layer_specs(model), strategy)
    g = torch.Generator().manual_seed(seed)
    return to_masked(model, fixed, density, generator=g), fixed


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", STRATEGIES, ids=strategy_id)
def test_exact_kept_count_per_layer(arch, strategy):
    model, _ = _masked(arch, strategy)
    layers = maskable_layers(model)
    assert all(isinstance(m, MaskedConv2d | MaskedLinear) for _, m in layers)
    for name, mask in extract_masks(model).items():
        n = mask.numel()
        assert int(mask.sum()) == kept_count(n, 0.5) == n - n // 2, name


@pytest.mark.parametrize("density", [0.1, 0.3, 0.9])
def test_kept_count_follows_density(density):
    model, _ = _masked("convmixer", Strategy("mp"), density)
    for mask in extract_masks(model).values():
        assert int(mask.sum()) == kept_count(mask.numel(), density)
    assert kept_count(10, 0.3) == 3 and kept_count(10, 0.25) == 3 and kept_count(3, 0.01) == 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", STRATEGIES[:4], ids=strategy_id)
def test_gradients_reach_scores_and_norms_never_fixed(arch, strategy):
    model, fixed = _masked(arch, strategy)
    model.train()
    x = torch.randn(4, 1, 28, 28)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, module in maskable_layers(model):
        assert module.scores.grad is not None and module.scores.grad.abs().sum() > 0, name
        assert not module.fixed_weight.requires_grad and module.fixed_weight.grad is None
    norms = [
        m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm)
    ]
    assert norms
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in norms)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.endswith("fixed_weight") for n in trainable)
    before = {n: m.fixed_weight.clone() for n, m in maskable_layers(model)}
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt.step()
    for name, module in maskable_layers(model):
        assert torch.equal(module.fixed_weight, before[name])
        assert torch.equal(module.fixed_weight, fixed[name])


@pytest.mark.parametrize("arch", ARCHS)
def test_applied_masks_reproduce_the_masked_model(arch):
    strategy = Strategy("rp", ratio=1e-2)
    masked, fixed = _masked(arch, strategy, seed=5)
    # perturb BN statistics so the comparison covers the trained tensors too
    with torch.no_grad():
        for m in masked.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.weight.uniform_(0.5, 1.5)
    masked.eval()
    plain = create_model(arch, in_channels=1, image_size=28, **SMALL[arch]).eval()
    state = {
        k: v for k, v in masked.state_dict().items() if not k.endswith(("fixed_weight", "scores"))
    }
    missing = plain.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == sorted(f"{n}.weight" for n, _ in maskable_layers(plain))
    apply_masks(plain, fixed, extract_masks(masked))
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), masked(x), rtol=0, atol=1e-6)


def test_straight_through_gradient_is_weight_times_upstream():
    lin = nn.Linear(4, 3, bias=False)
    fixed = torch.arange(12, dtype=torch.float32).view(3, 4) + 1
    layer = MaskedLinear(lin, fixed, 0.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.scores.copy_(torch.linspace(-1, 1, 12).view(3, 4))
    x = torch.ones(1, 4)
    layer(x).sum().backward()
    # d out / d mask_ij = W_ij * x_j = W_ij; through |S|: sign(S)
    torch.testing.assert_close(layer.scores.grad, fixed * torch.sign(layer.scores.detach()))


@pytest.mark.parametrize("density", [0, 1, -0.5, 1.5, "half", True])
def test_bad_density(density):
    model = create_model("mlp", **SMALL["mlp"])
    with pytest.raises(InvalidParameterError, match="density"):
        to_masked(model, generate(layer_specs(model), Strategy("mp")), density)


def test_bias_is_refused():
    model = nn.Sequential(nn.Linear(3, 2, bias=True))
    with pytest.raises(InvalidParameterError, match="bias"):
        to_masked(model, {"0": torch.zeros(2, 3)})


@pytest.mark.parametrize("arch", ARCHS)
def test_trained_state_is_the_same_for_plain_and_masked(arch):
    from pemn.masking import trained_state

    masked, _ = _masked(arch, Strategy("mp"))
    plain = create_model(arch, in_channels=1, image_size=28, **SMALL[arch])
    a, b = trained_state(masked), trained_state(plain)
    assert sorted(a) == sorted(b) and a
    assert not any(k.endswith(("scores", "fixed_weight", "num_batches_tracked")) for k in a)
    maskable = {f"{n}.weight" for n, _ in maskable_layers(plain)}
    assert not maskable & set(b)


def test_channels_last_masked_network_stays_channels_last():
    """The masked weight keeps the fixed weight's strides, so a channels-last masked
    ConvMixer (1x1 and depthwise kernels: ambiguous strides) runs channels-last end to
    end like its dense twin, and computes the same function as NCHW."""
    model, _ = _masked("convmixer", Strategy("mp"))
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    model.eval()
    want = model(x)
    model.to(memory_format=torch.channels_last)
    outs = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: outs.append(out))
        for m in model.modules()
        if isinstance(m, MaskedConv2d)
    ]
    got = model(x.contiguous(memory_format=torch.channels_last))
    for h in hooks:
        h.remove()
    for m in model.modules():
        if isinstance(m, MaskedConv2d):
            assert m.masked_weight().stride() == m.fixed_weight.stride()
    assert outs and all(
        o.is_contiguous(memory_format=torch.channels_last) and not o.is_contiguous() for o in outs
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    got.sum().backward()  # the strided view is differentiable
    assert all(m.scores.grad is not None for m in model.modules() if isinstance(m, MaskedConv2d))
