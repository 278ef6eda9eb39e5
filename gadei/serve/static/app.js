// The web page of gadei serve: plain JavaScript over the same /v1 API a client uses.
"use strict";

const $ = (id) => document.getElementById(id);
let key = localStorage.getItem("gadei-key") || "";
let selected = null;        // the classifier id shown in the detail section

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + key } };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${r.status}: ${data.description || data.error || r.statusText}`);
  return data;
}

function text(el, s, isError) {
  el.textContent = s;
  el.className = isError ? "error" : "";
}

$("key").value = key;
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  key = $("key").value.trim();
  localStorage.setItem("gadei-key", key);
  refresh();
});

$("upload-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = new FormData();
  form.append("training_data", $("upload-file").files[0]);
  form.append("training_metadata", JSON.stringify({ name: $("upload-name").value, language: "en" }));
  text($("upload-status"), "uploading ...");
  try {
    const c = await api("POST", "/v1/classifiers", form);
    text($("upload-status"), `created ${c.name} (${c.classifier_id}): ${c.status}`);
    selected = c.classifier_id;
    refresh();
  } catch (err) {
    text($("upload-status"), err.message, true);
  }
});

async function refresh() {
  if (!key) {
    text($("key-status"), "no key yet");
    return;
  }
  try {
    const { classifiers } = await api("GET", "/v1/classifiers");
    text($("key-status"), "key accepted");
    const rows = await Promise.all(classifiers.map((c) => api("GET", `/v1/classifiers/${c.classifier_id}`)));
    renderList(rows);
    text($("list-status"), rows.length ? "" : "no classifiers yet: upload a CSV above");
    const current = rows.find((c) => c.classifier_id === selected);
    if (current) await renderDetail(current);
    else $("detail-section").hidden = true;
  } catch (err) {
    text($("key-status"), err.message, true);
  }
}

function renderList(rows) {
  const body = $("classifiers").querySelector("tbody");
  body.replaceChildren();
  for (const c of rows) {
    const tr = document.createElement("tr");
    tr.dataset.id = c.classifier_id;
    if (c.classifier_id === selected) tr.className = "selected";
    const acc = c.metrics && c.metrics.validation ? c.metrics.validation.accuracy : undefined;
    const cells = [c.name, c.classifier_id, c.status,
                   `${c.training.updates_done} / ${c.training.updates_planned}`,
                   acc === undefined ? "" : acc.toFixed(3)];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = v;
      if (i === 2) td.className = "status status-" + c.status;
      tr.appendChild(td);
    });
    const td = document.createElement("td");
    const show = document.createElement("button");
    show.textContent = "show";
    show.className = "show";
    show.addEventListener("click", () => { selected = c.classifier_id; refresh(); });
    const del = document.createElement("button");
    del.textContent = "delete";
    del.addEventListener("click", async () => {
      if (!confirm(`Delete ${c.name}?`)) return;
      await api("DELETE", `/v1/classifiers/${c.classifier_id}`).catch((err) => alert(err.message));
      if (selected === c.classifier_id) selected = null;
      refresh();
    });
    td.append(show, " ", del);
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

async function renderDetail(c) {
  $("detail-section").hidden = false;
  $("detail-name").textContent = `${c.name} (${c.classifier_id})`;
  text($("detail-status"), `${c.status}: ${c.status_description}`, c.status === "Failed");
  $("classify-submit").disabled = c.status !== "Available";
  const { points } = await api("GET", `/v1/classifiers/${c.classifier_id}/training_curve`);
  drawCurve(points, c.training.updates_planned);
}

function drawCurve(points, planned) {
  const cv = $("curve"), g = cv.getContext("2d");
  const W = cv.width, H = cv.height, pad = 30;
  g.clearRect(0, 0, W, H);
  g.strokeStyle = "#999";
  g.strokeRect(pad, 5, W - pad - 5, H - pad - 5);
  g.fillStyle = "#555";
  g.fillText("0", pad - 10, H - pad + 12);
  g.fillText(String(planned), W - 40, H - pad + 12);
  g.fillText("updates", W / 2 - 20, H - 8);
  if (!points.length) return;
  const maxLoss = Math.max(...points.map((p) => p.loss || 0), 1e-9);
  const x = (u) => pad + (W - pad - 5) * Math.min(u / Math.max(planned, 1), 1);
  const y = (v) => 5 + (H - pad - 5) * (1 - v);
  const line = (key, scale, color, size) => {
    const pts = points.filter((p) => typeof p[key] === "number");
    if (!pts.length) return;
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    pts.forEach((p, i) => (i ? g.lineTo : g.moveTo).call(g, x(p.updates), y(p[key] / scale)));
    g.stroke();
    // a dot at every point: a short job may have all its points at one number of updates; the
    // loss dots are larger, so an accuracy dot drawn on the same spot leaves a red ring
    g.fillStyle = color;
    const h = size / 2;
    pts.forEach((p) => g.fillRect(Math.round(x(p.updates)) - h, Math.round(y(p[key] / scale)) - h, size, size));
  };
  line("loss", maxLoss, "#d9534f", 6);
  line("accuracy", 1, "#2a6fdb", 4);
}

$("classify-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!selected) return;
  text($("classify-status"), "classifying ...");
  try {
    const r = await api("POST", `/v1/classifiers/${selected}/classify`, { text: $("classify-text").value });
    text($("classify-status"), `top class: ${r.top_class}`);
    const out = $("classify-result");
    out.replaceChildren();
    for (const c of r.classes) {
      const row = document.createElement("div");
      row.className = "bar-row";
      const name = document.createElement("span");
      name.className = "bar-name";
      name.textContent = c.class_name;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(1, c.confidence * 300)}px`;
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = c.confidence.toFixed(3);
      row.append(name, bar, value);
      out.appendChild(row);
    }
  } catch (err) {
    text($("classify-status"), err.message, true);
  }
});

refresh();
setInterval(refresh, 2000);
