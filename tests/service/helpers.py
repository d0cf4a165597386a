"""Small helpers shared by the service tests."""

from __future__ import annotations

import numpy as np
import torch

from pemn.bundle import read_bundle
from pemn.materialize import materialize
from pemn.testing import ServerProcess
from tests.service.conftest import API_KEY

AUTH = {"X-API-Key": API_KEY}


def upload(server: ServerProcess, name: str, data: bytes, **headers: str):  # type: ignore[no-untyped-def]
    return server.upload(name, data, API_KEY, **headers)


def local_logits(data: bytes, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return materialize(read_bundle(data))(torch.from_numpy(x)).numpy()


def predict_logits(
    server: ServerProcess, name: str, x: np.ndarray, **extra: object
) -> tuple[np.ndarray, dict]:
    r = server.client.post(
        "/predict", json={"model": name, "inputs": x.tolist(), "return_logits": True, **extra}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return np.array([o["logits"] for o in body["outputs"]], dtype=np.float32), body


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)
