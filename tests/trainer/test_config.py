"""The training config is declared once: the command line comes from its fields, bad
values are one sentence naming the flag, and the run state keeps the checkpoint's
counters format."""

import argparse

import pytest

from trainer.cli import SWEEP_AXES, build_parser
from trainer.config import RUNTIME_FIELDS, TrainConfig, flag_name
from trainer.errors import ConfigError
from trainer.flags import config_values
from trainer.state import RunState, Tally

# every flag of the hand-written parser this generator replaced, with its default
# (None: none shown); a renamed or dropped flag, or a changed default, fails here
FLAGS = {
    "--arch": "convmixer", "--config": None, "--strategy": "mp", "--ratio": None,
    "--scale": "paper", "--density": "0.5", "--seed": "0", "--dataset": "fashion-mnist",
    "--data-dir": None, "--val-size": "0", "--train-limit": None, "--test-limit": None,
    "--flip": None, "--crop-pad": "0", "--epochs": "3", "--batch-size": "128",
    "--lr-max": "0.01", "--weight-decay": "0.005", "--warmup": "0.4", "--decay-end": "0.8",
    "--lr-floor": "0.05", "--device": "auto", "--threads": None, "--amp": "on",
    "--channels-last": "on", "--eval-batch-size": "1000", "--log-every": "50",
    "--checkpoint-every": "0",
    # folder:PATH datasets (issue 15)
    "--val-fraction": "0.2", "--image-size": None, "--channels": None, "--resize": "resize",
    # distillation and label smoothing (issue 16)
    "--label-smoothing": "0.0", "--teacher": None, "--distill-weight": "0.5",
    "--distill-temperature": "4.0",
}  # fmt: skip


def _options(command: str) -> dict[str, argparse.Action]:
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    return {name: a for a in sub._actions for name in a.option_strings}


def test_every_field_is_a_flag_with_its_default_and_bounds():
    options = _options("train")
    assert set(FLAGS) <= set(options)
    for flag, default in FLAGS.items():
        text = options[flag].help or ""
        if default is not None:
            assert f"default: {default}" in text, (flag, text)
    assert {flag_name(f) for f in TrainConfig.model_fields} == set(FLAGS)
    assert "> 0, < 1" in (options["--density"].help or "")
    assert options["-c"] is options["--config"]
    assert "--no-flip" in options and "--no-channels-last" in options


def test_sweep_flags_leave_out_its_axes():
    options = _options("sweep")
    assert not {flag_name(f) for f in SWEEP_AXES} & set(options)
    assert {"--strategies", "--ratios", "--scales", "--epochs"} <= set(options)


def test_flags_the_user_did_not_give_take_the_models_defaults():
    args = build_parser().parse_args(["train", "--out", "x", "--dataset", "mnist", "-c", "width=8"])
    cfg = TrainConfig(**config_values(args))
    assert cfg.flip is False  # the model's rule: no flips for digits
    assert cfg.arch_config == {"width": 8} and cfg.epochs == 3
    assert TrainConfig().flip is True and TrainConfig(dataset="mnist", flip=True).flip is True


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"lr_max": -1}, "--lr-max: input should be greater than 0, got -1"),
        ({"epochs": 0}, "--epochs"),
        ({"density": 1.0}, "--density"),
        ({"batch_size": 1}, "--batch-size"),
        ({"lr_max": float("nan")}, "--lr-max"),
        ({"strategy": "magic"}, "unknown strategy 'magic'"),
        ({"arch": "nope"}, "unknown architecture 'nope'"),
        ({"strategy": "rp"}, "needs --ratio"),
        ({"strategy": "mp", "ratio": 0.1}, "ratio"),  # the core's Strategy says it
        ({"seed": -1}, "seed"),
        ({"strategy": "dense", "scale": "fan_in"}, "dense baseline"),
        ({"warmup": 0.9}, "--warmup <= --decay-end"),
        ({"colour": "red"}, "unknown config key 'colour'"),
        ({"arch_config": ["width"]}, "KEY=VALUE"),
    ],
)
def test_bad_values_are_one_sentence_naming_the_flag(values, needle):
    with pytest.raises(ConfigError) as exc:
        TrainConfig(**values)
    assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_config_is_frozen_and_replace_revalidates():
    cfg = TrainConfig(strategy="rp", ratio=1e-2)
    with pytest.raises(ValueError, match="frozen"):
        cfg.epochs = 5  # type: ignore[misc]
    assert cfg.replace(strategy="mp", ratio=None).label() == "mp"
    with pytest.raises(ConfigError, match="needs --ratio"):
        cfg.replace(ratio=None)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_runtime_fields_are_marked_on_the_fields():
    assert {
        "data_dir", "device", "threads", "eval_batch_size", "log_every", "checkpoint_every"
    } == RUNTIME_FIELDS  # fmt: skip
    identity = TrainConfig().identity()
    assert "amp" in identity and "seed" in identity and not RUNTIME_FIELDS & set(identity)


def test_run_state_counters_keep_the_checkpoint_format():
    state = RunState(epoch=1, step=3, global_step=9)
    state.window.add(0.5, 3, 4)
    state.epoch_tally.add(0.25, 2, 8)
    state.epoch_seconds = 1.5
    counters = state.counters()
    assert counters == {
        "window": {"loss": 2.0, "correct": 3, "seen": 4},
        "epoch": {"loss": 2.0, "correct": 2, "seen": 8, "seconds": 1.5},
        "epochs": [],
    }
    assert RunState.restore(1, 3, 9, counters) == state
    state.next_epoch({"epoch": 2})
    assert (state.epoch, state.step, state.epoch_tally, state.epochs) == (
        2,
        0,
        Tally(),
        [{"epoch": 2}],
    )
