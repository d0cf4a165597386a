"""Real-data smoke test: a masked network learns Fashion-MNIST well above chance."""

import time

import pytest
import torch
from torch import nn

from pemn.archs import create_model
from pemn.layers import layer_specs
from pemn.masking import apply_masks, extract_masks, to_masked
from pemn.prototype import Strategy, generate
from trainer.data import load_fashion_mnist

pytestmark = pytest.mark.data


def _tensors(split, n):
    images, labels = load_fashion_mnist(split)
    x = torch.from_numpy(images[:n].copy()).float().div(255).sub(0.286).div(0.353).unsqueeze(1)
    return x, torch.from_numpy(labels[:n].astype("int64"))


@pytest.mark.parametrize(
    ("arch", "config", "floor"),
    [
        ("mlp", {"hidden": [256]}, 0.75),
        ("convmixer", {"width": 32, "depth": 2, "kernel": 5, "patch": 4}, 0.6),
    ],
)
def test_masked_network_learns_fashion_mnist(arch, config, floor):
    torch.manual_seed(0)
    x, y = _tensors("train", 6000)
    xt, yt = _tensors("test", 2000)
    model = create_model(arch, in_channels=1, image_size=28, num_classes=10, **config)
    fixed = generate(layer_specs(model), Strategy("rp", seed=0, ratio=1e-2))
    to_masked(model, fixed, 0.5, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, weight_decay=0.005
    )
    start = time.perf_counter()
    model.train()
    for _epoch in range(4):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    # the same masks applied to the plain network give the same predictions
    plain = create_model(arch, in_channels=1, image_size=28, num_classes=10, **config).eval()
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.endswith(("fixed_weight", "scores"))},
        strict=False,
    )
    apply_masks(plain, fixed, extract_masks(model))
    with torch.no_grad():
        plain_acc = (plain(xt).argmax(1) == yt).float().mean().item()
    print(
        f"{arch}: test accuracy {acc:.3f} after 4 epochs on 6000 images in {time.perf_counter() - start:.1f}s"
    )
    assert acc > floor, acc  # chance is 0.1
    assert plain_acc == acc
