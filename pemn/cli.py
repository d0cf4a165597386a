"""``python -m pemn``: command-line tools of the core library.

stats   N, M, U and the paper's compression of an architecture under a strategy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pemn.archs import create_model, list_archs
from pemn.prototype import STRATEGIES, Strategy, layer_specs, stats

__all__ = ["main"]

# The models the paper reports storage for (CIFAR-10 inputs).
_PAPER_MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("ConvMixer-256/6", "convmixer", {"width": 256, "depth": 6}),
    ("ConvMixer-256/8", "convmixer", {"width": 256, "depth": 8}),
    ("ResNet-32", "resnet32", {}),
    ("ResNet-56", "resnet56", {}),
]


def _parse_config(items: Sequence[str]) -> dict[str, Any]:
    """``["width=256", "hidden=[128,64]"]`` -> ``{"width": 256, "hidden": [128, 64]}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --config expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _stats_rows(
    arch: str, config: dict[str, Any], strategies: list[Strategy]
) -> list[dict[str, Any]]:
    specs = layer_specs(create_model(arch, **config))
    rows = []
    for st in strategies:
        s = stats(specs, st)
        label = st.name if st.ratio is None else f"{st.name} {st.ratio:g}"
        rows.append(
            {
                "strategy": label,
                "N": s.n,
                "M": s.m,
                "U": s.u,
                "compression_pct": 100 * s.compression,
            }
        )
    return rows


def _print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"{title}")
    print(f"  {'strategy':<10} {'N':>10} {'M':>8} {'U':>8} {'compression':>12}")
    for r in rows:
        print(
            f"  {r['strategy']:<10} {r['N']:>10,} {r['M']:>8,} {r['U']:>8,} {r['compression_pct']:>11.2f}%"
        )


def _cmd_stats(args: argparse.Namespace) -> int:
    if args.paper:
        strategies = [
            Strategy("mp"),
            Strategy("rp", ratio=1e-1),
            Strategy("rp", ratio=1e-2),
            Strategy("rp", ratio=1e-3),
        ]
        for title, arch, cfg in _PAPER_MODELS:
            _print_rows(title, _stats_rows(arch, cfg, strategies))
        return 0
    if args.arch is None:
        raise SystemExit("error: stats needs --arch (or --paper)")
    strategy = Strategy(args.strategy, seed=0, ratio=args.ratio, scale="paper")
    config = _parse_config(args.config)
    rows = _stats_rows(args.arch, config, [strategy])
    if args.json:
        print(json.dumps({"arch": args.arch, "config": config, **rows[0]}))
    else:
        _print_rows(f"{args.arch} {config or ''}".strip(), rows)
    return 0


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}") from None


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pemn.bundle import inspect_bundle

    summary = inspect_bundle(_read_file(args.file))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    ratio = f" ratio {summary['ratio']:g}" if summary["ratio"] is not None else ""
    print(f"{args.file}: pemn bundle v{summary['format_version']}")
    print(f"  arch        {summary['arch']} {json.dumps(summary['config'])}")
    print(
        f"  strategy    {summary['strategy']}{ratio} scale {summary['scale']} seed {summary['seed']} density {summary['density']}"
    )
    print(
        f"  weights     N={summary['N']:,} in {summary['layers']} layers, U={summary['U']:,} unique values"
    )
    print(
        f"  size        {summary['file_size']:,} bytes; dense fp32 {summary['dense_fp32_size']:,} bytes ({summary['size_ratio']:.1f}x); paper compression {100 * summary['paper_compression']:.2f}%"
    )
    print(
        f"  input       {summary['input']['shape']} mean {summary['input']['mean']} std {summary['input']['std']}"
    )
    print(
        f"  labels      {', '.join(summary['labels'][:10])}{' ...' if len(summary['labels']) > 10 else ''}"
    )
    print(f"  metrics     {json.dumps(summary['metrics'])}")
    print(f"  backbone    {summary['fingerprint']}")
    print(f"  content id  {summary['content_id']}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from pemn.bundle import BundleError, read_bundle

    try:
        b = read_bundle(_read_file(args.file))
    except BundleError as exc:
        print(f"{args.file}: invalid [{exc.code}] {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.file}: valid ({b.manifest.arch.name}, {b.strategy.name}, {b.size:,} bytes, {b.content_id})"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from pemn.bundle import read_bundle
    from pemn.export import export_onnx, onnx_parity
    from pemn.materialize import materialize

    bundle = read_bundle(_read_file(args.file))
    module = materialize(bundle, "cpu")
    shape = tuple(bundle.manifest.input.shape)
    model = export_onnx(module, shape)  # type: ignore[arg-type]
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(0))
    diff = onnx_parity(module, model, x)
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model)
    os.replace(tmp, args.output)
    print(f"wrote {args.output} ({len(model):,} bytes); max |onnxruntime - torch| = {diff:.3g}")
    return 0 if diff <= args.tolerance else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pemn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stats", help="N, M, U and the paper's compression % of an architecture")
    p.add_argument("--arch", choices=list_archs(), help="architecture name")
    p.add_argument("--strategy", choices=STRATEGIES, default="mp", help="fixed-weight strategy")
    p.add_argument("--ratio", type=float, default=None, help="rp ratio in (0, 1], e.g. 1e-2")
    p.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture config, repeatable (e.g. -c width=256 -c depth=6)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--paper", action="store_true", help="the table of the paper's CIFAR models")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("inspect", help="summary of a bundle (validates it)")
    p.add_argument("file", help="bundle file (.pemn)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "verify", help="validate a bundle fully; exit 1 with the error code when invalid"
    )
    p.add_argument("file", help="bundle file (.pemn)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("export", help="export a bundle to ONNX and check it against PyTorch")
    p.add_argument("file", help="bundle file (.pemn)")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="max allowed |onnx - torch| (default 1e-4)"
    )
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # typed parameter and bundle errors: one sentence, non-zero exit
        code = getattr(exc, "code", None)
        print(f"error{f' [{code}]' if code else ''}: {exc}", file=sys.stderr)
        return 2
