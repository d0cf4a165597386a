"""The web page at /ui in a real browser (Playwright driving Debian's Chromium)
against the real server with the example bundles: the model list, a model page,
predicting real Fashion-MNIST test pictures chosen as files, drawing on the canvas,
and uploading a bundle without and then with the API key. The page may talk only
to the server, and every answer it shows is checked against the public API.

Screenshots go to ``$PEMN_UI_SCREENSHOTS`` when set (``docs/`` holds one of a run),
else to the test's temporary directory. Skipped only where Chromium is absent
(``.ci/run`` installs it)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from pemn.testing import ServerProcess, make_bundle
from pemn.testing.service import ROOT
from tests.service.conftest import API_KEY
from trainer.data import load_fashion_mnist

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.data,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed"),
]
# The machine's network is closed: no background connections of the browser's own.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FASHION = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@pytest.fixture(scope="module")
def site(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(api_key=API_KEY, preload_dir=str(ROOT / "examples" / "bundles"))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, site):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    elsewhere: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # Chromium logs every 4xx answer; the 401 of an upload without the key is expected
    pg.on(
        "console",
        lambda m: (
            errors.append(m.text) if m.type == "error" and "status of 401" not in m.text else None
        ),
    )
    pg.on(
        "request",
        lambda r: (
            elsewhere.append(r.url) if not r.url.startswith((site.url, "data:", "blob:")) else None
        ),
    )
    yield pg
    context.close()
    assert errors == [], errors
    assert elsewhere == [], f"the page fetched from outside the server: {elsewhere}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("PEMN_UI_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("ui-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _open(pg, site: ServerProcess, hash_: str = "#/") -> None:  # type: ignore[no-untyped-def]
    pg.goto(f"{site.url}/ui{hash_}")
    pg.wait_for_selector("body[data-ready=true]")


def test_model_list_shows_what_the_api_says(page, site):
    r = site.client.get("/ui")
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
    _open(page, site)
    models = {m["name"]: m for m in site.client.get("/models").json()["data"]}
    assert set(models) == {"fashion-mnist", "mnist"}
    rows = page.locator("#models tbody tr")
    assert rows.count() == 2
    for i in range(2):
        row = rows.nth(i)
        m = models[row.get_attribute("data-model")]
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        assert cells[1] == str(m["version"])
        assert cells[2].startswith(m["architecture"])
        assert cells[3] == f"{m['strategy']} {m['ratio']}"
        assert cells[5] == f"{m['size_ratio']:.1f}x smaller"
        assert cells[6] == f"{100 * m['metrics']['test_accuracy']:.2f} %"
        # the two examples share one backbone
        assert m["backbone"].removeprefix("sha256:")[:8] in cells[7]
        assert "shared with 1 other" in cells[7]


def test_model_page_predicts_real_pictures_like_the_api(page, site, tmp_path, shots):
    images, labels = load_fashion_mnist("test")
    _open(page, site)
    page.click("#models a:text-is('fashion-mnist')")
    page.wait_for_selector("#labels li")
    assert page.locator("#labels li").all_inner_texts() == list(FASHION)
    assert "python -m trainer train" in page.inner_text("#provenance")
    right = 0
    for i in range(5):
        path = tmp_path / f"test-{i}.png"
        Image.fromarray(images[i]).save(path)
        page.set_input_files("#image-file", str(path))
        page.wait_for_selector(f"#predicted[data-file='test-{i}.png'] strong")
        shown = page.inner_text("#predicted strong")
        api = site.client.post(
            "/predict",
            data={"model": "fashion-mnist"},
            files={"file": (path.name, path.read_bytes(), "image/png")},
        ).json()
        assert shown == api["outputs"][0]["top"][0]["label"]
        bars = page.locator("#bars .bar .pct").all_inner_texts()
        want = [f"{100 * t['probability']:.1f} %" for t in api["outputs"][0]["top"]]
        assert bars == want
        right += shown == FASHION[labels[i]]
    assert right >= 4  # the example model is 86 % accurate; these pictures are real
    page.screenshot(path=str(shots / "ui-model.png"), full_page=True)


def test_drawing_on_the_canvas_is_predicted(page, site):
    _open(page, site, "#/models/mnist")
    page.wait_for_selector("#draw:not([hidden])")
    box = page.locator("#canvas").bounding_box()
    x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 11):  # a vertical stroke: a "1"
        page.mouse.move(x0, y0 + k * box["height"] * 0.06)
    page.mouse.up()
    page.click("#draw-predict")
    page.wait_for_selector("#predicted[data-file='drawing.png'] strong")
    shown = page.inner_text("#predicted strong")
    url = page.evaluate("document.getElementById('canvas').toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size == (280, 280)
    api = site.client.post("/predict", json={"model": "mnist", "images": [url]}).json()
    assert shown == api["outputs"][0]["top"][0]["label"]


def test_upload_asks_for_the_key_and_then_works(page, site, tmp_path, shots):
    bundle = tmp_path / "ui-upload.pemn"
    bundle.write_bytes(make_bundle(mask_seed=950))
    _open(page, site)
    assert page.is_visible("#upload-key")  # the server says it needs a key
    page.set_input_files("#upload-file", str(bundle))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-result.error")
    assert "API key" in page.inner_text("#upload-result")
    assert site.client.get("/models/ui-upload").status_code == 404
    page.fill("#upload-key", API_KEY)
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-result.ok")
    assert page.inner_text("#upload-result").startswith("uploaded: ui-upload version 1")
    page.wait_for_selector("#models tr[data-model='ui-upload']")
    assert site.client.get("/models/ui-upload").json()["version"] == 1
    page.screenshot(path=str(shots / "ui-models.png"), full_page=True)
