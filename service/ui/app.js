// pemn-serve's web page: plain JavaScript over the public API only
// (GET /, GET /models, GET /models/{name}, POST /predict, POST /models).
// Views are chosen by the URL's hash: #/ (the model list) and #/models/{name}.
// Every value from the server is written with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { keyRequired: false, models: [] };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    const err = new Error(message);
    err.status = response.status;
    err.code = body && body.code;
    throw err;
  }
  return body;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function accuracy(m) {
  const a = m.metrics && m.metrics.test_accuracy;
  return typeof a === "number" ? `${(100 * a).toFixed(2)} %` : "n/a";
}

function strategy(m) {
  return m.ratio === null || m.ratio === undefined ? m.strategy : `${m.strategy} ${m.ratio}`;
}

function architecture(m) {
  const c = m.config || {};
  const parts = ["width", "depth", "hidden", "patch", "kernel"].filter((k) => k in c)
    .map((k) => `${k}=${Array.isArray(c[k]) ? c[k].join("x") : c[k]}`);
  return parts.length ? `${m.architecture} (${parts.join(", ")})` : m.architecture;
}

function colour(text) {  // a stable colour per backbone fingerprint
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return `hsl(${h}, 55%, 42%)`;
}

function loaded(m) {
  const hot = (m.loaded || []).map((t) => `${t.runtime} on ${t.device}`);
  if (hot.length) return `materialized (${hot.join(", ")})`;
  return m.packed ? "packed masks resident" : "not loaded";
}

// ---- the model list --------------------------------------------------------------

async function showList() {
  const body = await api("/models");
  state.models = body.data;
  const shared = {};
  for (const m of state.models) shared[m.backbone] = (shared[m.backbone] || 0) + 1;
  const rows = $("models").querySelector("tbody");
  rows.replaceChildren();
  for (const m of state.models) {
    const tr = document.createElement("tr");
    tr.dataset.model = m.name;
    const name = el("td");
    const link = el("a", m.name);
    link.href = `#/models/${encodeURIComponent(m.name)}`;
    name.append(link);
    const backbone = el("td");
    const tag = el("span", m.backbone.replace("sha256:", "").slice(0, 8), "tag");
    tag.style.background = colour(m.backbone);
    tag.title = m.backbone;
    backbone.append(tag);
    const others = shared[m.backbone] - 1;
    backbone.append(el("span", others ? ` shared with ${others} other${others > 1 ? "s" : ""}` : " own", "muted"));
    tr.append(
      name,
      el("td", m.version, "num"),
      el("td", architecture(m)),
      el("td", strategy(m)),
      el("td", bytes(m.file_size), "num"),
      el("td", `${m.size_ratio.toFixed(1)}x smaller`, "num"),
      el("td", accuracy(m), "num"),
      backbone,
      el("td", loaded(m)),
    );
    rows.append(tr);
  }
  $("models-empty").hidden = state.models.length > 0;
  if (state.index) {
    $("status").textContent = `${state.index.ready ? "ready" : "starting"} · ${state.models.length} models · version ${state.index.version}`;
  }
  $("upload-key-label").hidden = !state.keyRequired;
}

async function upload(event) {
  event.preventDefault();
  const out = $("upload-result");
  out.className = "";
  out.textContent = "uploading...";
  const file = $("upload-file").files[0];
  const form = new FormData();
  form.append("file", file);
  const name = $("upload-name").value.trim();
  if (name) form.append("name", name);
  const headers = {};
  const key = $("upload-key").value;
  if (key) headers["X-API-Key"] = key;
  try {
    const m = await api("/models", { method: "POST", body: form, headers });
    out.className = "ok";
    out.textContent = `${m.created ? "uploaded" : "unchanged"}: ${m.name} version ${m.version} (${bytes(m.file_size)})`;
    await showList();
  } catch (err) {
    out.className = "error";
    if (err.status === 401) {
      state.keyRequired = true;
      $("upload-key-label").hidden = false;
      out.textContent = `${err.message}: enter the server's API key and upload again`;
    } else {
      out.textContent = err.message;
    }
  }
}

// ---- one model -------------------------------------------------------------------

function keyValues(table, entries) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const [k, v] of entries) {
    const tr = document.createElement("tr");
    tr.append(el("th", k), el("td", typeof v === "object" ? JSON.stringify(v) : v));
    body.append(tr);
  }
  if (!entries.length) body.append(el("tr", "none recorded", "muted"));
}

async function showModel(name) {
  const m = await api(`/models/${encodeURIComponent(name)}`);
  state.model = m;
  $("model-name").textContent = m.name;
  const [c, h, w] = m.input_shape;
  $("model-summary").textContent =
    `version ${m.version} · ${architecture(m)} · ${strategy(m)} · ${bytes(m.file_size)} ` +
    `(${m.size_ratio.toFixed(1)}x smaller than dense fp32) · test accuracy ${accuracy(m)}`;
  const labels = $("labels");
  labels.replaceChildren(...m.labels.map((l) => el("li", l)));
  keyValues($("provenance"), Object.entries(m.provenance || {}));
  keyValues($("details"), [
    ["input", `${c} x ${h} x ${w} (${c === 1 ? "greyscale" : c === 3 ? "RGB" : `${c} channels`})`],
    ["image resize rule", m.input_resize],
    ["backbone", m.backbone],
    ["seed", m.seed],
    ["content id", m.content_id],
    ["versions", (m.versions || []).map((v) => v.version).join(", ")],
    ["loaded", loaded(m)],
    ...Object.entries(m.metrics || {}).map(([k, v]) => [`metric ${k}`, v]),
  ]);
  $("draw").hidden = !(h === 28 && w === 28 && c === 1);
  clearCanvas();
  $("predicted").textContent = "";
  $("bars").replaceChildren();
  $("preview").hidden = true;
}

async function predict(blob, filename) {
  const form = new FormData();
  form.append("model", state.model.name);
  form.append("top_k", "5");
  form.append("file", blob, filename);
  $("predicted").textContent = "predicting...";
  $("predicted").dataset.file = "";
  $("bars").replaceChildren();
  const preview = $("preview");
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  try {
    const body = await api("/predict", { method: "POST", body: form });
    const top = body.outputs[0].top;
    $("predicted").replaceChildren(el("span", "predicted: "), el("strong", top[0].label));
    $("predicted").dataset.file = filename;
    const bars = top.map((t) => {
      const row = el("div", null, "bar");
      const track = el("div", null, "track");
      const fill = el("div", null, "fill");
      fill.style.width = `${(100 * t.probability).toFixed(1)}%`;
      track.append(fill);
      row.append(el("span", t.label, "label"), track, el("span", `${(100 * t.probability).toFixed(1)} %`, "pct"));
      return row;
    });
    $("bars").replaceChildren(...bars);
  } catch (err) {
    $("predicted").textContent = "";
    showError(err.message);
  }
}

// ---- drawing ----------------------------------------------------------------------

function clearCanvas() {
  const ctx = $("canvas").getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, 280, 280);
}

function setupCanvas() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  let last = null;
  const point = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * (canvas.width / r.width), (e.clientY - r.top) * (canvas.height / r.height)];
  };
  canvas.addEventListener("pointerdown", (e) => { last = point(e); canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = point(e);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 22;
    ctx.lineCap = "round";
    ctx.beginPath();
    ctx.moveTo(...last);
    ctx.lineTo(...p);
    ctx.stroke();
    last = p;
  });
  const stop = () => { last = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  $("draw-clear").addEventListener("click", clearCanvas);
  $("draw-predict").addEventListener("click", () => {
    canvas.toBlob((blob) => predict(blob, "drawing.png"), "image/png");
  });
}

function setupDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) predict(file, file.name);
  });
  $("image-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) predict(file, file.name);
  });
}

// ---- routing ------------------------------------------------------------------------

async function route() {
  showError("");
  const match = location.hash.match(/^#\/models\/(.+)$/);
  $("list-view").hidden = Boolean(match);
  $("model-view").hidden = !match;
  try {
    if (match) await showModel(decodeURIComponent(match[1]));
    else await showList();
  } catch (err) {
    showError(err.message);
  }
}

async function start() {
  try {
    const index = await api("/");
    state.index = index;
    state.keyRequired = Boolean(index.api_key_required);
    $("status").textContent = `${index.ready ? "ready" : "starting"} · ${index.models} models · version ${index.version}`;
  } catch (err) {
    $("status").textContent = `server not answering: ${err.message}`;
  }
  setupCanvas();
  setupDrop();
  $("upload-form").addEventListener("submit", upload);
  window.addEventListener("hashchange", route);
  await route();
  document.body.dataset.ready = "true";
}

start();
