"""The baseline of the serving benchmarks: what a user would write instead of
pemn-serve. A plain FastAPI app holding each network dense, loaded from a normal
safetensors checkpoint, and running the model once per request in a plain ``def``
endpoint (FastAPI's threadpool). No batching, no task sharing, no ONNX.

Models live in ``--models-dir`` as ``NAME.safetensors`` (the dense state dict) plus
``NAME.json`` (architecture, config, input normalisation, labels). ``--preload``
names load at startup; any other name loads on its first request and stays loaded
(the cold-task benchmark times that first request).

``POST /predict`` takes the same JSON as pemn-serve's (``model``, ``inputs`` as
nested lists, ``top_k``, ``return_logits``) and answers the top-k classes per item.

    python -m bench.baseline_server --port 8001 --models-dir DIR --threads 1 --preload m
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from safetensors.torch import load as load_safetensors
from torch import nn

from pemn.archs import create_model
from pemn.normalize import Normalize

__all__ = ["create_app", "load_dense"]


class PredictRequest(BaseModel):
    model: str
    inputs: list[Any]
    top_k: int = 5
    return_logits: bool = False


def load_dense(checkpoint: bytes, meta: dict[str, Any]) -> nn.Module:
    """safetensors bytes -> eval-mode network (normalisation included)."""
    net = create_model(meta["arch"], **meta["config"])
    net.load_state_dict(load_safetensors(checkpoint))
    return nn.Sequential(Normalize(meta["mean"], meta["std"]), net).eval()


def create_app(models_dir: Path, preload: list[str]) -> FastAPI:
    models: dict[str, tuple[nn.Module, list[str]]] = {}
    lock = threading.Lock()

    def get_model(name: str) -> tuple[nn.Module, list[str]]:
        if name in models:
            return models[name]
        with lock:
            if name not in models:
                path = models_dir / f"{name}.safetensors"
                if not path.is_file():
                    raise HTTPException(404, "Model not found")
                meta = json.loads(path.with_suffix(".json").read_text())
                models[name] = (load_dense(path.read_bytes(), meta), meta["labels"])
            return models[name]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for name in preload:
            get_model(name)
        yield

    app = FastAPI(title="baseline", lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "models": len(models)}

    @app.post("/predict")
    def predict(req: PredictRequest) -> dict[str, Any]:
        model, labels = get_model(req.model)
        x = torch.tensor(np.asarray(req.inputs, dtype=np.float32))
        if x.ndim == 3:
            x = x[None]
        with torch.inference_mode():
            logits = model(x)
        prob, idx = torch.softmax(logits, dim=1).topk(min(req.top_k, logits.shape[1]), dim=1)
        outputs = []
        for i in range(len(x)):
            top = [
                {"index": int(j), "label": labels[int(j)], "probability": float(p)}
                for j, p in zip(idx[i], prob[i], strict=True)
            ]
            item: dict[str, Any] = {"top": top}
            if req.return_logits:
                item["logits"] = logits[i].tolist()
            outputs.append(item)
        return {"model": req.model, "outputs": outputs}

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baseline_server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--models-dir", type=Path, required=True)
    p.add_argument("--preload", default="", help="comma-separated model names")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    app = create_app(args.models_dir, [n for n in args.preload.split(",") if n])
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
