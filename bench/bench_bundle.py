"""Bundle size and load time against the same network stored dense, same run.

Models (CIFAR shapes: 3x32x32 inputs, 10 classes): ConvMixer-256/8, ResNet-56 and
ViT (width 256, depth 6); strategies mp and rp 1e-2; masks of density 0.5 drawn
from the generator (``pemn.testing.make_bundle``). Baselines: the
materialized network's ``state_dict`` as fp32 safetensors and as ``torch.save``.

Sizes: bundle bytes (and how much of them is the fp32 norm state) vs each dense file.

Times (median of ``--repeats`` runs after 2 warm-up runs, same thread count),
from bytes already in memory to an eval-mode network ready to run:

  dense st     ``safetensors.torch.load`` + ``create_model`` + ``load_state_dict``
  dense pt     ``torch.load(BytesIO, weights_only=True)`` + ``create_model`` + ``load_state_dict``
  cold         the service's path: ``read_bundle(verify=False)`` (full validation but
               the digest) + ``Backbone.for_bundle`` (prototype generated once, its
               digest computed) + ``backbone.task`` (manifest digest checked against
               the backbone's); process-wide caches (``pemn.materialize.clear_caches``)
               are cleared before every run
  cold, arch seen   the same, but only the digest cache is cleared: a new backbone
               (seed, strategy) of an architecture and config the process has seen
  warm         ``read_bundle(verify=False)`` + ``backbone.task`` (digest compared with
               the resident backbone's), the backbone already built

Parts (medians, ms): validate = ``read_bundle(verify=False)``; generate =
``pemn.prototype.generate``; digest = ``pemn.prototype.digest`` of it; backbone =
``Backbone.for_bundle`` (generation, digest, templates, constants); unpack+mul =
masks unpacked and applied to the fixed weights; build = the rest of ``task``
(module and buffers).

Run: python -m bench.bench_bundle [--repeats 15] [--threads 1] [--save-json F] [--compare F]
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import pemn.bundle.reader as reader
import pemn.materialize as M
from bench._report import interleaved_medians, table, write_section
from pemn.archs import create_model
from pemn.bundle import read_bundle
from pemn.materialize import Backbone, unpack_bits
from pemn.prototype import Strategy, digest, generate
from pemn.testing import make_bundle

ROOT = Path(__file__).resolve().parents[1]

MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("ConvMixer-256/8", "convmixer", {"width": 256, "depth": 8}),
    ("ResNet-56", "resnet56", {}),
    ("ViT-256/6", "vit", {"width": 256, "depth": 6}),
]
STRATEGIES = [("mp", Strategy("mp")), ("rp 1e-2", Strategy("rp", ratio=1e-2))]


def _clear() -> None:
    clear = getattr(M, "clear_caches", None)  # absent before the caches existed
    if clear is not None:
        clear()


def _clear_digests() -> None:
    forget = getattr(reader, "forget_digests", None)
    if forget is not None:
        forget()


def _dense_state(bundle_data: bytes) -> dict[str, torch.Tensor]:
    """The materialized network as a plain ``create_model`` state_dict (fp32)."""
    b = read_bundle(bundle_data)
    net = Backbone.for_bundle(b).task(b).module.net
    return {k: v.clone() for k, v in net.state_dict().items()}


def _unpack_mul(backbone: Backbone, bundle: Any) -> None:
    packed = torch.from_numpy(np.array(bundle.masks))
    bits = unpack_bits(packed)
    offsets = [0]
    for s in bundle.layout.layers[:-1]:
        offsets.append(offsets[-1] + (s.numel + 7) // 8)
    for s, off in zip(bundle.layout.layers, offsets, strict=True):
        _ = backbone.fixed[s.name] * bits[8 * off : 8 * off + s.numel].view(s.shape)


def run(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for title, arch, config in MODELS:
        for label, strategy in STRATEGIES:
            data = make_bundle(arch, config, strategy, density=0.5)
            bundle = read_bundle(data)
            state = _dense_state(data)
            st_bytes = st_save(state)
            buf = io.BytesIO()
            torch.save(state, buf)
            pt_bytes = buf.getvalue()
            full = bundle.manifest.arch.config

            def dense_st(st_bytes: bytes = st_bytes, full: dict = full, arch: str = arch) -> None:
                net = create_model(arch, **full)
                net.load_state_dict(st_load(st_bytes))
                net.eval()

            def dense_pt(pt_bytes: bytes = pt_bytes, full: dict = full, arch: str = arch) -> None:
                net = create_model(arch, **full)
                net.load_state_dict(torch.load(io.BytesIO(pt_bytes), weights_only=True))
                net.eval()

            def cold(data: bytes = data) -> None:
                b = read_bundle(data, verify=False)
                Backbone.for_bundle(b).task(b)  # task() checks the digest

            _clear()
            backbone = Backbone.for_bundle(bundle)

            def warm(data: bytes = data, backbone: Backbone = backbone) -> None:
                backbone.task(read_bundle(data, verify=False))

            fixed = generate(bundle.layout.layers, bundle.strategy)
            (header,) = struct.unpack_from("<Q", data)
            lean = json.loads(bundle.manifest.model_dump_json())
            del lean["layers"], lean["trained"]
            compact = {"sort_keys": True, "separators": (",", ":")}
            lean_header = json.dumps(
                {
                    "__metadata__": {
                        "format": "pemn-bundle",
                        "manifest": json.dumps(lean, **compact),
                    }
                },
                **compact,
            )
            r: dict[str, Any] = {
                "lean_header_bytes": 8 + len(lean_header) + 2 * 60,  # + two tensor entries
                "model": title,
                "strategy": label,
                "N": bundle.stats.n,
                "bundle_bytes": len(data),
                "header_bytes": 8 + header,
                "state_bytes": 4 * int(bundle.state.size),
                "dense_st_bytes": len(st_bytes),
                "dense_pt_bytes": len(pt_bytes),
            }
            r |= interleaved_medians(
                {
                    "dense_st": dense_st,
                    "dense_pt": dense_pt,
                    "cold": cold,
                    "cold_seen": cold,
                    "warm": warm,
                    "validate": lambda data=data: read_bundle(data, verify=False),
                    "generate": lambda b=bundle: generate(b.layout.layers, b.strategy),
                    "digest": lambda fixed=fixed: digest(fixed),
                    "backbone": lambda b=bundle: Backbone.for_bundle(b),
                    "task": lambda bb=backbone, b=bundle: bb.task(b),
                    "unpack_mul": lambda bb=backbone, b=bundle: _unpack_mul(bb, b),
                },
                repeats,
                before={"cold": _clear, "cold_seen": _clear_digests, "backbone": _clear},
            )
            rows.append(r)
            print(
                f"{title} {label}: bundle {len(data):,} B, dense {len(st_bytes):,} B; "
                f"dense {1e3 * r['dense_st']:.1f} ms, cold {1e3 * r['cold']:.1f} ms, warm {1e3 * r['warm']:.1f} ms",
                file=sys.stderr,
            )
    return rows


def _ms(s: float) -> str:
    return f"{1e3 * s:.1f}"


def render(
    rows: list[dict[str, Any]], baseline: list[dict[str, Any]] | None, baseline_name: str
) -> str:
    sizes = table(
        [
            "model",
            "strategy",
            "N",
            "bundle (B)",
            "fp32 state",
            "header",
            "dense safetensors (B)",
            "ratio",
            "torch.save (B)",
            "ratio",
            "ratio, masks only",
        ],
        [
            [
                r["model"],
                r["strategy"],
                f"{r['N']:,}",
                f"{r['bundle_bytes']:,}",
                f"{r['state_bytes']:,} ({100 * r['state_bytes'] / r['bundle_bytes']:.1f}%)",
                f"{r['header_bytes']:,} ({100 * r['header_bytes'] / r['bundle_bytes']:.1f}%)",
                f"{r['dense_st_bytes']:,}",
                f"{r['dense_st_bytes'] / r['bundle_bytes']:.1f}x",
                f"{r['dense_pt_bytes']:,}",
                f"{r['dense_pt_bytes'] / r['bundle_bytes']:.1f}x",
                f"{r['dense_st_bytes'] / (r['bundle_bytes'] - r['state_bytes'] - r['header_bytes']):.1f}x",
            ]
            for r in rows
        ],
    )

    def proj(r: dict[str, Any], state_bytes: float, header: int) -> str:
        masks = r["bundle_bytes"] - r["state_bytes"] - r["header_bytes"]
        return f"{r['dense_st_bytes'] / (masks + state_bytes + header):.1f}x"

    projections = table(
        [
            "model",
            "now",
            "state fp16",
            "state fp16, manifest without layer lists",
            "state 8-bit, manifest without layer lists",
            "masks only (ceiling)",
        ],
        [
            [
                r["model"],
                f"{r['dense_st_bytes'] / r['bundle_bytes']:.1f}x",
                proj(r, r["state_bytes"] / 2, r["header_bytes"]),
                proj(r, r["state_bytes"] / 2, r["lean_header_bytes"]),
                proj(r, r["state_bytes"] / 4, r["lean_header_bytes"]),
                proj(r, 0, 0),
            ]
            for r in rows
            if r["strategy"] == rows[0]["strategy"]
        ],
    )
    times = table(
        [
            "model",
            "strategy",
            "dense st",
            "dense pt",
            "cold",
            "cold, arch seen",
            "warm",
            "cold / dense st",
            "cold, arch seen / dense st",
            "warm / dense st",
        ],
        [
            [
                r["model"],
                r["strategy"],
                _ms(r["dense_st"]),
                _ms(r["dense_pt"]),
                _ms(r["cold"]),
                _ms(r["cold_seen"]),
                _ms(r["warm"]),
                f"{r['cold'] / r['dense_st']:.2f}",
                f"{r['cold_seen'] / r['dense_st']:.2f}",
                f"{r['warm'] / r['dense_st']:.2f}",
            ]
            for r in rows
        ],
    )
    parts = table(
        [
            "model",
            "strategy",
            "validate",
            "generate",
            "digest",
            "backbone",
            "task",
            "of which unpack+mul",
            "build",
        ],
        [
            [
                r["model"],
                r["strategy"],
                _ms(r["validate"]),
                _ms(r["generate"]),
                _ms(r["digest"]),
                _ms(r["backbone"]),
                _ms(r["task"]),
                _ms(r["unpack_mul"]),
                _ms(max(0.0, r["task"] - r["unpack_mul"])),
            ]
            for r in rows
        ],
    )
    body = (
        "Goals: dense/bundle size ratio >= 30x (the 1-bit ceiling is 32x); warm <= 0.5x and "
        "cold <= 1.0x the dense safetensors load.\n\n"
        f"### Sizes\n\n{sizes}\n\n"
        "Projected ratios of format changes (proposals, not implemented; "
        "the manifest size is estimated by dropping `layers` and `trained`):\n\n"
        f"{projections}\n\n### Load time, ms (median of repeated runs)\n\n{times}\n\n"
        f"### Where the time goes, ms\n\n{parts}\n"
    )
    if baseline:
        old = {(r["model"], r["strategy"]): r for r in baseline}
        pairs = [
            (old[(r["model"], r["strategy"])], r)
            for r in rows
            if (r["model"], r["strategy"]) in old
        ]
        cmp = table(
            [
                "model",
                "strategy",
                "cold / dense st, before",
                "after",
                "warm / dense st, before",
                "after",
                "cold ms, before",
                "after",
                "warm ms, before",
                "after",
            ],
            [
                [
                    r["model"],
                    r["strategy"],
                    f"{o['cold'] / o['dense_st']:.2f}",
                    f"{r['cold'] / r['dense_st']:.2f}",
                    f"{o['warm'] / o['dense_st']:.2f}",
                    f"{r['warm'] / r['dense_st']:.2f}",
                    _ms(o["cold"]),
                    _ms(r["cold"]),
                    _ms(o["warm"]),
                    _ms(r["warm"]),
                ]
                for o, r in pairs
            ],
        )
        body += (
            "\n### Before / after the reader and materialization optimizations\n\n"
            f"Before: the same script on the code before them (commit 19c5eab), figures in "
            f"`{baseline_name}`. Both runs shared the machine with a training sweep; "
            "compare the ratios, which are measured against the dense load interleaved in the same run.\n\n"
            f"{cmp}\n"
        )
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per figure (median)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (same for every figure)"
    )
    parser.add_argument("--save-json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--compare", type=Path, help="raw figures of an earlier run to compare with"
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.repeats)
    if args.save_json:
        args.save_json.write_text(json.dumps(rows, indent=1) + "\n")
    baseline = json.loads(args.compare.read_text()) if args.compare else None
    name = str(args.compare.resolve().relative_to(ROOT)) if args.compare else ""
    body = render(rows, baseline, name)
    command = f"python -m bench.bench_bundle --repeats {args.repeats} --threads {args.threads}" + (
        f" --compare {name}" if args.compare else ""
    )
    if args.no_docs:
        print(body)
    else:
        write_section("bundle", "Bundle size and load time vs dense", body, command)


if __name__ == "__main__":
    main()
