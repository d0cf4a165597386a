"""Bundle size and load time against the same network stored dense, same run.

Models: the reference ConvMixer-128/4 (width 128, depth 4, kernel 5, patch 2;
Fashion-MNIST inputs 1x28x28) and the paper's ConvMixer-256/8, ResNet-56 and ViT
(width 256, depth 6) with CIFAR shapes (3x32x32, 10 classes); strategies mp and
rp 1e-2; masks of density 0.5 drawn from the generator
(``pemn.testing.deterministic_masks``); manifests with what the trainer
writes (the dataset's labels, its metrics, the command in the provenance).
Baselines: the materialized network's ``state_dict`` as fp32 safetensors and as
``torch.save``.

Sizes: the same bundle in format 1.0 (float32 state, full manifest) and 2.0 with
each norm-state precision (float32, bfloat16, float16: the default), against the
dense fp32 safetensors file; masks, state and header bytes of each. Also the
shipped example bundles (trained) in both formats (`convert_bundle`).

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

Times are of the format 2.0 (float16) bundle; ``validate 1.0`` and ``warm 1.0`` are
the same figures for its format 1.0 twin, interleaved in the same run.

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
import math
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from bench._report import interleaved_medians, table, write_section
from pemn import caches
from pemn.archs import create_model, resolve_config
from pemn.bundle import InputSpec, convert_bundle, read_bundle, write_bundle
from pemn.materialize import Backbone, PackedTask, TaskWeights
from pemn.prototype import Strategy, digest, generate
from pemn.testing import deterministic_masks, make_model_state

ROOT = Path(__file__).resolve().parents[1]
FMNIST = {"in_channels": 1, "image_size": 28}
MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("ConvMixer-128/4 (reference)", "convmixer", {**FMNIST, "width": 128, "depth": 4, "patch": 2}),
    ("ConvMixer-256/8", "convmixer", {"width": 256, "depth": 8}),
    ("ResNet-56", "resnet56", {}),
    ("ViT-256/6", "vit", {"width": 256, "depth": 6}),
]
STRATEGIES = [("mp", Strategy("mp")), ("rp 1e-2", Strategy("rp", ratio=1e-2))]
LABELS = {
    "fashion-mnist": "T-shirt/top Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag Ankle_boot",
    "cifar10": "airplane automobile bird cat deer dog frog horse ship truck",
}
STATS = {  # the training split's pixel statistics, as the trainer rounds them (6 decimals)
    "fashion-mnist": {"mean": (0.286041,), "std": (0.353024,)},
    "cifar10": {"mean": (0.491399, 0.482158, 0.446531), "std": (0.24703, 0.243485, 0.261587)},
}
VARIANTS = [  # (column, write_bundle options)
    ("1.0", {"format_version": "1.0"}),
    ("2.0 float32", {"state_dtype": "float32"}),
    ("2.0 bfloat16", {"state_dtype": "bfloat16"}),
    ("2.0 float16", {}),  # the default
    ("2.0 float16, no metrics or provenance", {"bare": True}),
]


def _bundle(
    arch: str, config: dict[str, Any], strategy: Strategy, bare: bool = False, **options: Any
) -> bytes:
    """A bundle with the manifest the trainer writes: labels, metrics, the command
    (``bare``: without the metrics and the provenance)."""
    full = resolve_config(arch, **config)
    model = create_model(arch, **full)
    dataset = "fashion-mnist" if full["in_channels"] == 1 else "cifar10"
    cfg = "".join(f"-c {k}={v} " for k, v in config.items() if k not in FMNIST)
    ratio = f" --ratio {strategy.ratio:g}" if strategy.ratio else ""
    command = (
        f"python -m trainer train --arch {arch} {cfg}--strategy {strategy.name}{ratio} "
        f"--seed 0 --dataset {dataset} --epochs 3 --threads 2 --no-progress "
        f"--out runs/{arch}/bundle.pemn --run-dir runs/{arch}"
    )
    c = full["in_channels"]
    return write_bundle(
        arch=arch,
        config=config,
        strategy=strategy,
        density=0.5,
        masks=deterministic_masks(model, 0.5, 0),
        trained=make_model_state(model, 0),
        input_spec=InputSpec(shape=(c, full["image_size"], full["image_size"]), **STATS[dataset]),
        labels=[s.replace("_", " ") for s in LABELS[dataset].split()],
        metrics={}
        if bare
        else {
            "dataset": dataset,
            "epochs": 3,
            "test_accuracy": 0.8857,
            "test_examples": 10000,
        },
        provenance={} if bare else {"command": command},
        **options,
    )


def _parts(data: bytes) -> dict[str, int]:
    """Bytes of masks, state and header (length field, JSON, padding) of a bundle."""
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + n])
    span = {
        k: e["data_offsets"][1] - e["data_offsets"][0]
        for k, e in header.items()
        if k != "__metadata__"
    }
    return {"bytes": len(data), "masks": span["masks"], "state": span["state"], "header": 8 + n}


def _clear() -> None:
    caches.clear()


def _clear_digests() -> None:
    caches.CACHES.digests.clear()


def _medians(
    figures: dict[str, tuple[Callable[[], object], Callable[[], None] | None]], repeats: int
) -> dict[str, float]:
    """Median seconds of each figure's function, interleaved; each figure's
    ``before()`` runs untimed before each of its calls; 2 warm-up rounds."""
    before = {n: b for n, (_, b) in figures.items() if b is not None}
    return interleaved_medians({n: f for n, (f, _) in figures.items()}, repeats, before=before)


def _dense_state(bundle_data: bytes) -> dict[str, torch.Tensor]:
    """The materialized network as a plain ``create_model`` state_dict (fp32)."""
    b = read_bundle(bundle_data)
    net = Backbone.for_bundle(b).task(b).module.net
    return {k: v.clone() for k, v in net.state_dict().items()}


def _unpack_mul(backbone: Backbone, packed: PackedTask, out: TaskWeights) -> None:
    """Only the expansion of a packed task into a preallocated buffer."""
    backbone.materialize(packed, out)


def run(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for title, arch, config in MODELS:
        for label, strategy in STRATEGIES:
            variants = {name: _bundle(arch, config, strategy, **o) for name, o in VARIANTS}
            data, data_1 = variants["2.0 float16"], variants["1.0"]
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

            # As the service loads a task: validate, pack (checks the prototype
            # digest), expand its weights; cold also builds the backbone.
            def cold(data: bytes = data) -> None:
                b = read_bundle(data, verify=False)
                bb = Backbone.for_bundle(b)
                bb.materialize(bb.pack(b))

            _clear()
            backbone = Backbone.for_bundle(bundle)
            packed, out = backbone.pack(bundle), backbone.empty_weights()

            def warm(data: bytes = data, backbone: Backbone = backbone) -> None:
                backbone.materialize(backbone.pack(read_bundle(data, verify=False)))

            def warm_1(data: bytes = data_1, backbone: Backbone = backbone) -> None:
                backbone.materialize(backbone.pack(read_bundle(data, verify=False)))

            fixed = generate(bundle.layout.layers, bundle.strategy)
            r: dict[str, Any] = {
                "model": title,
                "strategy": label,
                "N": bundle.stats.n,
                "bundle_bytes": len(data),
                "sizes": {name: _parts(v) for name, v in variants.items()},
                "dense_st_bytes": len(st_bytes),
                "dense_pt_bytes": len(pt_bytes),
            }
            r |= _medians(
                {
                    "dense_st": (dense_st, None),
                    "dense_pt": (dense_pt, None),
                    "cold": (cold, _clear),
                    "cold_seen": (cold, _clear_digests),
                    "warm": (warm, None),
                    "warm_1": (warm_1, None),
                    "validate": (lambda data=data: read_bundle(data, verify=False), None),
                    "validate_1": (lambda data=data_1: read_bundle(data, verify=False), None),
                    "generate": (lambda b=bundle: generate(b.layout.layers, b.strategy), None),
                    "digest": (lambda fixed=fixed: digest(fixed), None),
                    "backbone": (lambda b=bundle: Backbone.for_bundle(b), _clear),
                    "task": (lambda bb=backbone, b=bundle: bb.task(b), None),
                    "unpack_mul": (
                        lambda bb=backbone, p=packed, o=out: _unpack_mul(bb, p, o),
                        None,
                    ),
                },
                repeats,
            )
            rows.append(r)
            print(
                f"{title} {label}: bundle {len(data):,} B, dense {len(st_bytes):,} B; "
                f"dense {1e3 * r['dense_st']:.1f} ms, cold {1e3 * r['cold']:.1f} ms, warm {1e3 * r['warm']:.1f} ms",
                file=sys.stderr,
            )
    return rows


def examples() -> list[dict[str, Any]]:
    """The shipped example bundles (trained) in format 1.0 and in 2.0 (float16), each
    converted from the shipped file, whichever version that is."""
    out = []
    for path in sorted((ROOT / "examples" / "bundles").glob("*.pemn")):
        data = path.read_bytes()
        out.append(
            {
                "file": str(path.relative_to(ROOT)),
                "dense": len(st_save(_dense_state(data))),
                "1.0": _parts(convert_bundle(data, format_version="1.0")),
                "2.0": _parts(convert_bundle(data)),
            }
        )
    return out


def _ratio(dense: int, size: int) -> str:
    """dense / size truncated (not rounded) to 2 decimals: 29.9986 is 29.99x, not 30.00x."""
    return f"{math.floor(100 * dense / size) / 100:.2f}x"


def _ms(s: float) -> str:
    return f"{1e3 * s:.1f}"


def render(
    rows: list[dict[str, Any]], baseline: list[dict[str, Any]] | None, baseline_name: str
) -> str:
    def cell(r: dict[str, Any], name: str) -> str:
        size = r["sizes"][name]["bytes"]
        return f"{size:,} ({_ratio(r['dense_st_bytes'], size)})"

    sizes = table(
        [
            "model",
            "strategy",
            "N",
            "dense fp32 safetensors (B)",
            *(f"{name} (B, ratio)" for name, _ in VARIANTS),
            "2.0 float16: masks / state / header",
            "masks only (ceiling)",
        ],
        [
            [
                r["model"],
                r["strategy"],
                f"{r['N']:,}",
                f"{r['dense_st_bytes']:,}",
                *(cell(r, name) for name, _ in VARIANTS),
                "{masks:,} / {state:,} / {header:,}".format(**r["sizes"]["2.0 float16"]),
                _ratio(r["dense_st_bytes"], r["sizes"]["2.0 float16"]["masks"]),
            ]
            for r in rows
        ],
    )
    parts_1 = table(
        ["model", "strategy", "1.0: masks / state / header", "2.0 float16: masks / state / header"],
        [
            [
                r["model"],
                r["strategy"],
                "{masks:,} / {state:,} / {header:,}".format(**r["sizes"]["1.0"]),
                "{masks:,} / {state:,} / {header:,}".format(**r["sizes"]["2.0 float16"]),
            ]
            for r in rows
        ],
    )
    examples = table(
        [
            "file (trained)",
            "dense fp32 (B)",
            "1.0 (B, ratio)",
            "2.0 float16 (B, ratio)",
            "header 1.0 -> 2.0 (B)",
        ],
        [
            [
                e["file"],
                f"{e['dense']:,}",
                f"{e['1.0']['bytes']:,} ({_ratio(e['dense'], e['1.0']['bytes'])})",
                f"{e['2.0']['bytes']:,} ({_ratio(e['dense'], e['2.0']['bytes'])})",
                f"{e['1.0']['header']:,} -> {e['2.0']['header']:,}",
            ]
            for e in (rows[0].get("examples") or [])
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
            "warm, 1.0 file",
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
                _ms(r["warm_1"]),
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
            "validate, 1.0 file",
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
                _ms(r["validate_1"]),
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
        "Goals (issue 16): dense fp32 / bundle >= 30x for the paper-sized networks (moonshot 31x; "
        "the 1-bit ceiling is 32x), >= 20x for the reference ConvMixer-128/4; warm <= 0.5x and "
        "cold <= 1.0x the dense safetensors load.\n\n"
        f"### Sizes: format 1.0 beside 2.0\n\n{sizes}\n\n"
        "Ratios are truncated to 2 decimals. Header = the 8-byte length, the JSON header "
        "with the manifest, and padding to 8 bytes. "
        "Where the bytes went (masks / norm state / header):\n\n"
        f"{parts_1}\n\n"
        "The shipped example bundles (trained; [examples/bundles](../examples/bundles/README.md)), "
        "each in both formats (`python -m pemn convert`):\n\n"
        f"{examples}\n\n"
        f"### Load time, ms (median of repeated runs)\n\n{times}\n\n"
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
    rows[0]["examples"] = examples()
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
