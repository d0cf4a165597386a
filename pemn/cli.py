"""``python -m pemn``: command-line tools of the core library.

stats     N, M, U and the paper's compression of an architecture under a strategy
inspect   summary of a bundle (validates it)
verify    full validation of a bundle: exit 0 when valid, 1 with the error code when not
convert   a bundle rewritten in another format version or norm-state precision
export    a bundle as ONNX, checked against PyTorch
schema    the JSON Schema of the bundle manifest
publish   upload bundle files (or directories of *.pemn) into a store
rollback  make an earlier version of a model its latest again
store     store maintenance: ``store migrate URL`` converts a store v1 layout
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pemn.archs import create_model, list_archs, parse_config_items
from pemn.bundle.dtypes import STATE_DTYPES
from pemn.bundle.spec import FORMAT_VERSION, WRITE_VERSIONS
from pemn.files import atomic_write
from pemn.layers import layer_specs
from pemn.prototype import STRATEGIES, Strategy, stats
from pemn.retry import RetryPolicy

__all__ = ["main"]

T = TypeVar("T")

# The models the paper reports storage for (CIFAR-10 inputs).
_PAPER_MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("ConvMixer-256/6", "convmixer", {"width": 256, "depth": 6}),
    ("ConvMixer-256/8", "convmixer", {"width": 256, "depth": 8}),
    ("ResNet-32", "resnet32", {}),
    ("ResNet-56", "resnet56", {}),
]


def _parse_config(items: Sequence[str]) -> dict[str, Any]:
    try:
        return parse_config_items(items)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


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
    print(
        f"{args.file}: pemn bundle v{summary['format_version']}, norm state {summary['state_dtype']}"
    )
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


def _cmd_convert(args: argparse.Namespace) -> int:
    from pemn.bundle import convert_bundle, inspect_bundle

    data = _read_file(args.file)
    out = convert_bundle(data, format_version=args.format_version, state_dtype=args.state_dtype)
    summary = inspect_bundle(out)
    try:
        atomic_write(args.output, out)
    except OSError as exc:
        raise SystemExit(f"error: cannot write {args.output}: {exc.strerror}") from None
    print(
        f"wrote {args.output}: format {summary['format_version']}, norm state "
        f"{summary['state_dtype']}, {len(data):,} -> {len(out):,} bytes "
        f"({summary['size_ratio']:.1f}x dense fp32), content id {summary['content_id']}"
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
    if not diff <= args.tolerance:
        print(
            f"error: max |onnxruntime - torch| = {diff:.3g} exceeds the tolerance "
            f"{args.tolerance:g}; {args.output} not written",
            file=sys.stderr,
        )
        return 1
    try:
        atomic_write(args.output, model)
    except OSError as exc:
        raise SystemExit(f"error: cannot write {args.output}: {exc.strerror}") from None
    print(f"wrote {args.output} ({len(model):,} bytes); max |onnxruntime - torch| = {diff:.3g}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from pemn.bundle.spec import manifest_schema_text

    sys.stdout.write(manifest_schema_text())
    return 0


def _bundle_files(paths: Sequence[str]) -> list[Path]:
    """The files to publish: each FILE as given, each directory's ``*.pemn`` sorted."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.pemn") if p.is_file())
            if not found:
                raise SystemExit(f"error: directory {raw} holds no *.pemn bundles")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"error: {raw} is neither a bundle file nor a directory")
    return files


def _store_url(given: str | None) -> str:
    url = given or os.environ.get("PEMN_STORE_URL")
    if not url:
        raise SystemExit("error: give the store as --store URL (or set PEMN_STORE_URL)")
    return url


def _retrying(call: Callable[[], T], wait_s: float) -> T:
    """``call()``, retried with backoff while the store is unreachable, for ``wait_s`` s."""
    from pemn.store import Unavailable

    def say(exc: BaseException, pause: float) -> None:
        print(f"waiting for the store ({exc}); retrying in {pause:.1f}s", file=sys.stderr)

    unreachable = RetryPolicy(
        lambda e: isinstance(e, Unavailable), first=0.5, cap=5.0, deadline_s=wait_s, on_retry=say
    )
    return unreachable.call(call)


def _cmd_publish(args: argparse.Namespace) -> int:
    from pemn.store import open_store

    files = _bundle_files(args.files)
    if args.name is not None and len(files) != 1:
        raise SystemExit(f"error: --name needs exactly one bundle file, got {len(files)}")
    with open_store(_store_url(args.store)) as store:
        for path in files:
            name = args.name or path.stem
            data = _read_file(str(path))
            result = _retrying(functools.partial(store.put, name, data), args.wait)
            state = "published" if result.created else "unchanged"
            print(
                f"{state} {path} as {name} v{result.version} ({result.content_id}, {result.size:,} bytes) in {store.url}"
            )
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from pemn.store import open_store

    with open_store(_store_url(args.store)) as store:
        current = _retrying(lambda: store.info(args.name), args.wait)
        if current.version == args.version:
            print(f"{args.name} v{args.version} already is the latest version")
            return 0
        # Conditional on what was just read: a publish in between is not undone.
        result = store.rollback(args.name, args.version, if_match=current.content_id)
    print(
        f"rolled back {args.name}: v{result.version} is the latest version again ({result.content_id}); v{current.version} stays retained"
    )
    return 0


def _cmd_store_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from pemn.store import open_async_store
    from pemn.store.migrate import migrate

    async def run() -> tuple[str, int]:
        async with open_async_store(args.url) as store:
            return store.url, await migrate(store)

    url, n = asyncio.run(run())
    print(f"{url}: {n} name(s) migrated to the store v2 layout")
    return 0


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

    p = sub.add_parser(
        "convert",
        help="rewrite a bundle in another format version or norm-state precision (same masks)",
    )
    p.add_argument("file", help="bundle file (.pemn), any version this reader reads")
    p.add_argument("-o", "--output", required=True, help="bundle file to write (atomically)")
    p.add_argument(
        "--format-version",
        choices=WRITE_VERSIONS,
        default=FORMAT_VERSION,
        help="format to write (default %(default)s; 1.0 for readers of format 1 only)",
    )
    p.add_argument(
        "--state-dtype",
        choices=sorted(STATE_DTYPES),
        default=None,
        help="precision of the norm state (default: float16 in 2.0, float32 in 1.0)",
    )
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "export",
        help="export a bundle to ONNX; written (atomically) only if ONNX Runtime matches PyTorch",
    )
    p.add_argument("file", help="bundle file (.pemn)")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="max allowed |onnx - torch| (default 1e-4)"
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("schema", help="print the JSON Schema of the bundle manifest")
    p.set_defaults(func=_cmd_schema)

    store_help = "store URL: file:///dir, redis://host:port/db?prefix=p, s3://bucket/prefix (default: $PEMN_STORE_URL)"
    wait_help = "keep retrying this many seconds while the store is unreachable (default 0)"
    p = sub.add_parser(
        "publish", help="upload bundles into a store (files or directories of *.pemn)"
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="bundle files, or directories whose *.pemn to publish",
    )
    p.add_argument("--store", help=store_help)
    p.add_argument("--name", help="model name (one file only; default: each file's stem)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help=wait_help)
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser(
        "rollback", help="make a retained earlier version of a model its latest again"
    )
    p.add_argument("name", help="model name")
    p.add_argument("version", type=int, help="the retained version that becomes the latest")
    p.add_argument("--store", help=store_help)
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help=wait_help)
    p.set_defaults(func=_cmd_rollback)

    p = sub.add_parser("store", help="store maintenance")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    p = store_sub.add_parser(
        "migrate",
        help="convert a store written by store v1 (before per-name versions) in place; "
        "safe to re-run; stop v1 writers first",
    )
    p.add_argument("url", help=store_help.removesuffix(" (default: $PEMN_STORE_URL)"))
    p.set_defaults(func=_cmd_store_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pemn.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StoreError as exc:  # unreachable, invalid bundle or name, bad URL: one sentence
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # typed parameter and bundle errors: one sentence, non-zero exit
        code = getattr(exc, "code", None)
        print(f"error{f' [{code}]' if code else ''}: {exc}", file=sys.stderr)
        return 2
