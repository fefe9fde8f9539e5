// fcnseg web page: upload an image, draw the predicted classes over it, list them.
"use strict";
const $ = (id) => document.getElementById(id);
let maskImage = null;

function headers() {
  const key = sessionStorage.getItem("fcnseg-key");
  return key ? { "X-API-Key": key } : {};
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModel() {
  const r = await fetch("/v1/model", { headers: headers() });
  if (r.status === 401) {
    $("key-row").hidden = false;
    $("model").textContent = "this server needs an API key";
    return;
  }
  const m = await r.json();
  $("model").textContent = `${m.model.name || "FCN"} (${m.model.backbone || ""}) for ` +
    `${m.model.dataset}: ${m.classes.length} classes, ${m.runtime} ${m.precision}`;
}

function drawOverlay() {
  const canvas = $("overlay"), img = $("original");
  if (!maskImage || !img.naturalWidth) return;
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(img, 0, 0);
  ctx.globalAlpha = parseFloat($("opacity").value);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(maskImage, 0, 0, canvas.width, canvas.height);
  canvas.dataset.ready = "1";
}

function showLegend(classes) {
  const list = $("legend");
  list.replaceChildren();
  for (const c of classes.filter((c) => c.pixels > 0).sort((a, b) => b.pixels - a.pixels)) {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = `rgb(${c.color.join(",")})`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = `${(100 * c.fraction).toFixed(1)} %`;
    li.append(sw, name, share);
    list.append(li);
  }
}

async function segment(file) {
  if (!file) return;
  status(`segmenting ${file.name}…`);
  $("overlay").dataset.ready = "";
  const original = $("original");
  original.src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("image", file);
  let r;
  try {
    r = await fetch("/v1/segment?output=json&mask=true", { method: "POST", body: form,
                                                           headers: headers() });
  } catch (e) {
    status(`the server did not answer (${e})`, true);
    return;
  }
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) {
    if (r.status === 401) $("key-row").hidden = false;
    status(body.error || `HTTP ${r.status}`, true);
    return;
  }
  const href = `data:image/png;base64,${body.mask_png}`;
  $("download").href = href;
  $("download").download = file.name.replace(/\.[^.]*$/, "") + "_mask.png";
  maskImage = new Image();
  maskImage.onload = () => { if (original.complete) drawOverlay(); };
  original.onload = drawOverlay;
  maskImage.src = href;
  showLegend(body.classes);
  $("result").hidden = false;
  status(`${file.name}: ${body.width} x ${body.height}`);
}

$("file").addEventListener("change", (e) => segment(e.target.files[0]));
$("opacity").addEventListener("input", drawOverlay);
$("key").addEventListener("change", (e) => {
  sessionStorage.setItem("fcnseg-key", e.target.value);
  loadModel();
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  segment(e.dataTransfer.files[0]);
});
loadModel().catch((e) => status(`cannot reach the server (${e})`, true));
