"""Images in: the example Fashion-MNIST model's accuracy on the 10,000 test images
sent as PNG files over HTTP against the same pixels sent as tensors, the throughput
of ``/predict`` with one PNG per request against one tensor per request, and the
decoding cost per image, all in the same run.

Accuracy: one pemn-serve process (this tree, file store, 1 torch thread) serving
``examples/bundles/fashion-mnist.pemn``; the test set goes as multipart PNG files
(``--files-per-request`` per request), as JPEG files (quality 90, lossy: for
reference), and as uint8 ``.npy`` tensors; the bundle's recorded accuracy (measured
by the trainer on tensors) is the third reference.

Throughput: closed-loop clients (``bench/_loadgen.py``, its own process), one image
per request, ``--concurrency`` each: a tensor as nested JSON lists (the README's
form), a tensor as base64 ``.npy``, a PNG as multipart (``curl -F file=@x.png``),
a PNG as base64 JSON. The kinds alternate within each of ``--rounds`` rounds; the
table gives the median over rounds and the ratio to nested lists.

Decoding cost: in process, the median time from request body to the model's
(1, 1, 28, 28) float32 array for each representation, and for a 1024x768 JPEG photo.

Run: python -m bench.bench_images [--duration 8] [--rounds 3] [--concurrency 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from urllib3.filepost import encode_multipart_formdata

from bench._report import table, write_section
from bench._serving import load_average, pemn_server, run_load, upload
from pemn.bundle import read_bundle
from trainer.data import load_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "examples" / "bundles" / "fashion-mnist.pemn"
NAME = "fashion-mnist"


def _encode(a: np.ndarray, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **kw)
    return buf.getvalue()


def _npy_b64(x: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, x)
    return base64.b64encode(buf.getvalue()).decode()


def _accuracy(client, images: np.ndarray, labels: np.ndarray, per_request: int) -> dict:  # type: ignore[no-untyped-def]
    """Predicted labels of the test set sent three ways, and their accuracies."""
    preds: dict[str, list[int]] = {"png": [], "jpeg": [], "tensor": []}
    start = time.perf_counter()
    for i in range(0, len(images), per_request):
        chunk = images[i : i + per_request]
        for kind, fmt, kw in (("png", "PNG", {}), ("jpeg", "JPEG", {"quality": 90})):
            files = [
                ("file", (f"{i + j}.{kind}", _encode(x, fmt, **kw))) for j, x in enumerate(chunk)
            ]
            r = client.post("/predict", data={"model": NAME, "top_k": "1"}, files=files)
            r.raise_for_status()
            preds[kind] += [o["top"][0]["index"] for o in r.json()["outputs"]]
        body = {"model": NAME, "inputs": _npy_b64(chunk[:, None]), "top_k": 1}
        r = client.post("/predict", json=body)
        r.raise_for_status()
        preds["tensor"] += [o["top"][0]["index"] for o in r.json()["outputs"]]
    out = {k: np.array(v) for k, v in preds.items()}
    return {
        "acc": {k: float((v == labels).mean()) for k, v in out.items()},
        "agree_png": int((out["png"] == out["tensor"]).sum()),
        "agree_jpeg": int((out["jpeg"] == out["tensor"]).sum()),
        "seconds": time.perf_counter() - start,
    }


def _bodies(x: np.ndarray, directory: Path) -> dict[str, tuple[Path, str | None]]:
    """One request body per kind: (file, content type or None for an inputs field)."""
    lists = directory / "lists.json"
    lists.write_text(json.dumps((x[None, None].astype(np.float32) / 255).tolist()))
    npy = directory / "npy.json"
    npy.write_text(json.dumps(_npy_b64(x[None, None])))
    png = _encode(x)
    body, ctype = encode_multipart_formdata(
        [("model", NAME), ("top_k", "5"), ("file", ("shoe.png", png, "image/png"))]
    )
    multipart = directory / "multipart.bin"
    multipart.write_bytes(body)
    b64 = directory / "b64.json"
    b64.write_text(
        json.dumps({"model": NAME, "images": [base64.b64encode(png).decode()], "top_k": 5})
    )
    return {
        "tensor, JSON lists": (lists, None),
        "tensor, base64 .npy": (npy, None),
        "PNG, multipart": (multipart, ctype),
        "PNG, base64 JSON": (b64, "application/json"),
    }


def _median_us(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def _decoding_cost(x: np.ndarray, repeats: int) -> list[tuple[str, float]]:
    """Median microseconds from request body to the model's array, per representation."""
    from starlette.datastructures import Headers

    from pemn.bundle import inspect_bundle
    from service.catalog import ModelRecord
    from service.image_inputs import from_base64, read_form
    from service.images import EncodedImage, ImageLimits, decode_images
    from service.inputs import from_lists, from_npy_b64, parse_json
    from service.schemas import PredictRequest

    data = BUNDLE.read_bytes()
    record = ModelRecord.model_validate(
        {**inspect_bundle(data), "name": NAME, "version": 1, "content_id": "c", "size": len(data)}
    )
    limits = ImageLimits(10 << 20, 40_000_000, 100_000_000, 64)
    png = _encode(x)
    lists = json.dumps({"model": NAME, "inputs": (x[None, None] / 255).tolist()}).encode()
    npy = json.dumps({"model": NAME, "inputs": _npy_b64(x[None, None])}).encode()
    b64 = json.dumps({"model": NAME, "images": [base64.b64encode(png).decode()]}).encode()
    form, ctype = encode_multipart_formdata(
        [("model", NAME), ("file", ("shoe.png", png, "image/png"))]
    )
    headers = Headers({"content-type": ctype})
    photo = _encode(
        np.asarray(Image.fromarray(x).resize((1024, 768)).convert("RGB")), "JPEG", quality=90
    )
    loop = asyncio.new_event_loop()

    def via_lists() -> None:
        req = parse_json(PredictRequest, lists)
        from_lists(req.inputs, record, 1024)  # type: ignore[arg-type]

    def via_npy() -> None:
        req = parse_json(PredictRequest, npy)
        from_npy_b64(req.inputs, record, 1024)  # type: ignore[arg-type]

    def via_b64() -> None:
        req = parse_json(PredictRequest, b64)
        decode_images(from_base64(req.images or [], limits), record, limits)

    def via_form() -> None:
        _, images, _ = loop.run_until_complete(read_form(headers, form, limits))
        decode_images(images, record, limits)

    def via_photo() -> None:
        decode_images([EncodedImage("photo.jpg", photo)], record, limits)

    try:
        return [
            ("tensor, JSON lists (parse + check)", _median_us(via_lists, repeats)),
            ("tensor, base64 .npy", _median_us(via_npy, repeats)),
            ("PNG 28x28, base64 JSON (parse + decode)", _median_us(via_b64, repeats)),
            ("PNG 28x28, multipart (parse + decode)", _median_us(via_form, repeats)),
            (
                f"JPEG photo 1024x768 ({len(photo) // 1024} kB) -> 28x28 grey",
                _median_us(via_photo, repeats // 10),
            ),
        ]
    finally:
        loop.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--files-per-request", type=int, default=50)
    p.add_argument("--limit", type=int, default=10_000, help="test images for the accuracy")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = p.parse_args()
    images, labels = load_fashion_mnist("test")
    images, labels = images[: args.limit], labels[: args.limit]
    recorded = float(read_bundle(BUNDLE.read_bytes()).manifest.metrics["test_accuracy"])
    concurrency = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="pemn-bench-images-") as tmp:
        tmpdir = Path(tmp)
        server = pemn_server(tmpdir / "store", threads=1)
        try:
            upload(server, NAME, BUNDLE.read_bytes())
            acc = _accuracy(server.client, images, labels, args.files_per_request)
            print(f"accuracy: {acc}", file=sys.stderr)
            bodies = _bodies(images[0], tmpdir)
            runs: dict[tuple[str, int], list] = {}
            for rnd in range(args.rounds):
                for c in concurrency:
                    for kind, (path, ctype) in bodies.items():
                        load = run_load(
                            server.url,
                            [NAME],
                            path,
                            concurrency=c,
                            duration=args.duration,
                            warmup=args.warmup,
                            content_type=ctype,
                        )
                        runs.setdefault((kind, c), []).append(load)
                        print(
                            f"round {rnd + 1} c={c} {kind}: {load.throughput:.0f}/s",
                            file=sys.stderr,
                        )
        finally:
            server.stop()
    cost = _decoding_cost(images[0], repeats=3000)
    write = not args.no_write
    _report(args, acc, recorded, runs, concurrency, list(bodies), cost, len(images), write)


def _report(args, acc, recorded, runs, concurrency, kinds, cost, n, write) -> None:  # type: ignore[no-untyped-def]
    from bench._serving import Load

    a = acc["acc"]
    body = [
        f"The example `fashion-mnist` bundle on the {n:,} Fashion-MNIST test images over HTTP "
        f"(pemn-serve, 1 torch thread, {args.files_per_request} files or tensors per request):",
        "",
        table(
            ["inputs", "test accuracy", "predictions equal to the tensors'"],
            [
                [
                    "PNG files (multipart)",
                    f"{100 * a['png']:.2f} %",
                    f"{acc['agree_png']:,} / {n:,}",
                ],
                ["uint8 tensors (base64 .npy)", f"{100 * a['tensor']:.2f} %", "-"],
                [
                    "JPEG files, quality 90 (lossy)",
                    f"{100 * a['jpeg']:.2f} %",
                    f"{acc['agree_jpeg']:,} / {n:,}",
                ],
                ["recorded in the bundle by the trainer (tensors)", f"{100 * recorded:.2f} %", "-"],
            ],
        ),
        "",
        "PNG is lossless and the preprocessing of a 28x28 greyscale picture is the identity, so the "
        "PNG files give exactly the tensors' predictions.",
        "",
        f"Throughput of `/predict`, one image per request, closed loop, median of {args.rounds} "
        f"interleaved rounds of {args.duration:g} s (load average at the end: {load_average()}):",
        "",
    ]
    rows = []
    for c in concurrency:
        base = Load.median_of(runs[(kinds[0], c)]).throughput
        for kind in kinds:
            m = Load.median_of(runs[(kind, c)])
            rows.append(
                [
                    c,
                    kind,
                    f"{m.throughput:.0f}",
                    f"{m.throughput / base:.2f}",
                    f"{m.p50:.2f}",
                    f"{m.p99:.2f}",
                ]
            )
    body += [
        table(["clients", "inputs", "requests/s", "vs JSON lists", "p50 ms", "p99 ms"], rows),
        "",
        "Decoding cost in process (median over repeats; request body to the model's float32 array):",
        "",
        table(["inputs", "microseconds"], [[k, f"{v:.0f}"] for k, v in cost]),
    ]
    text = "\n".join(body)
    if write:
        write_section(
            "images", "Images in: PNG over HTTP vs tensors", text, "python -m bench.bench_images"
        )
    else:
        print(text)


if __name__ == "__main__":
    main()
