"""Sweeps: expansion of strategies x ratios x scales, the table and plot, and a
rerun that skips finished runs."""

import pytest

from trainer.config import TrainConfig
from trainer.errors import ConfigError
from trainer.sweep import expand, run_sweep


def test_expand_applies_ratios_to_rp_and_scales_to_mp_rp():
    configs = expand(
        TrainConfig(), ["dense", "mask", "one_layer", "mp", "rp"], [1e-1, 1e-3], ["paper", "fan_in"]
    )
    assert [c.label() for c in configs] == [
        "dense", "mask", "one_layer", "mp", "rp-0.1", "rp-0.001",
        "mp-fan_in", "rp-0.1-fan_in", "rp-0.001-fan_in",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="unknown strategy"):
        expand(TrainConfig(), ["mask", "magic"], [], ["paper"])


@pytest.mark.data
def test_small_sweep_writes_table_plot_bundles_and_skips_on_rerun(tmp_path):
    base = TrainConfig(
        arch="mlp", arch_config={"hidden": [16]}, train_limit=128, test_limit=100,
        epochs=1, batch_size=32, threads=1,
    )  # fmt: skip
    configs = expand(base, ["dense", "mp", "rp"], [1e-1], ["paper", "fan_in"])
    lines: list[str] = []
    results = run_sweep(configs, tmp_path, progress=False, echo=lines.append)
    assert [r["label"] for r in results] == ["dense", "mp", "rp-0.1", "mp-fan_in", "rp-0.1-fan_in"]
    flat, scales = (tmp_path / "table.md").read_text().split("\n\n")
    table = flat.splitlines()
    assert len(table) == 2 + 5 and table[2].startswith("| dense |")
    assert "| mp |" in scales and "| rp 0.1 |" in scales  # paper scaling beside fan_in
    assert (tmp_path / "size.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "rp-0.1" / "bundle.pemn").exists()
    assert (tmp_path / "dense" / "dense.safetensors").exists()
    for r in results:  # the accuracy of the written file equals the score model's
        assert r["export"]["test_accuracy"] == r["test_accuracy"]
    lines.clear()
    again = run_sweep(configs, tmp_path, progress=False, echo=lines.append)
    assert sum("already trained, skipped" in line for line in lines) == 5
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in results]
