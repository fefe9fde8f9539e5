// fcnseg web page: upload an image, draw the predicted classes over it, list them.
// States: empty (nothing but the drop zone), busy (the new image, no old result beside it),
// result (overlay, legend, download), error (a message, no stale result). Only the latest
// image counts: choosing another aborts the request still under way.
"use strict";
const $ = (id) => document.getElementById(id);
let maskImage = null;
let clearColours = [];  // "r,g,b" of classes left transparent (background)
let lastFile = null;
let pending = null;  // the AbortController of the request under way

function needKey(wrong) {
  // The server refused the key (or its absence): ask for one, saying which.
  $("key-row").hidden = false;
  $("key").focus();
  const text = wrong ? "wrong key: check it and enter it again"
                     : "this server needs an API key: enter it above";
  $("model").textContent = text;
  return text;
}

function keyAccepted() {
  $("key-row").hidden = true;
}

function headers() {
  const key = sessionStorage.getItem("fcnseg-key");
  return key ? { "X-API-Key": key } : {};
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function clearResult() {
  maskImage = null;
  $("result").hidden = true;
  $("overlay").dataset.ready = "";
  $("legend").replaceChildren();
  $("download").removeAttribute("href");
  const old = $("original").src;
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  $("original").removeAttribute("src");
}

async function loadModel() {
  const r = await fetch("/v1/model", { headers: headers() });
  if (r.status === 401) {
    needKey(Boolean(sessionStorage.getItem("fcnseg-key")));
    return false;
  }
  keyAccepted();
  const m = await r.json();
  clearColours = m.classes.filter((c) => c.name.toLowerCase() === "background")
    .map((c) => c.color.join(","));
  $("model").textContent = `${m.model.name || "FCN"} (${m.model.backbone || ""}) for ` +
    `${m.model.dataset}: ${m.classes.length} classes, ${m.runtime} ${m.precision}`;
  return true;
}

function transparentBackground(image) {
  // The background class is not painted: the photo shows through unchanged.
  const c = document.createElement("canvas");
  c.width = image.naturalWidth;
  c.height = image.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(image, 0, 0);
  if (!clearColours.length) return c;
  const data = ctx.getImageData(0, 0, c.width, c.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    if (clearColours.includes(`${px[i]},${px[i + 1]},${px[i + 2]}`)) px[i + 3] = 0;
  }
  ctx.putImageData(data, 0, 0);
  return c;
}

function drawOverlay() {
  const canvas = $("overlay"), img = $("original");
  if (!maskImage || !maskImage.complete || !img.naturalWidth) return;
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(img, 0, 0);
  ctx.globalAlpha = parseFloat($("opacity").value);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(maskImage.layer || (maskImage.layer = transparentBackground(maskImage)), 0, 0);
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
  if (pending) pending.abort();  // an older image's answer must not land over this one
  const mine = pending = new AbortController();
  lastFile = file;
  clearResult();  // never an old mask over a new image
  status(`segmenting ${file.name}…`);
  const form = new FormData();
  form.append("image", file);
  let r, body;
  try {
    r = await fetch("/v1/segment?output=json&mask=true", { method: "POST", body: form,
                                                           headers: headers(),
                                                           signal: mine.signal });
    body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  } catch (e) {
    if (mine.signal.aborted) return;  // replaced by a newer image: nothing to say
    status(`the server did not answer (${e})`, true);
    return;
  } finally {
    if (pending === mine) pending = null;
  }
  if (mine.signal.aborted) return;
  if (!r.ok) {
    status(r.status === 401 ? needKey(Boolean(headers()["X-API-Key"]))
                            : body.error || `HTTP ${r.status}`, true);
    return;
  }
  keyAccepted();
  const href = `data:image/png;base64,${body.mask_png}`;
  $("download").href = href;
  $("download").download = file.name.replace(/\.[^.]*$/, "") + "_mask.png";
  const original = $("original");
  maskImage = new Image();
  maskImage.onload = drawOverlay;
  original.onload = drawOverlay;
  original.src = URL.createObjectURL(file);
  maskImage.src = href;
  showLegend(body.classes);
  $("result").hidden = false;
  status(`${file.name}: ${body.width} x ${body.height}`);
  // On a phone the result is below the drop zone: bring it into view.
  $("result").scrollIntoView({ behavior: "smooth", block: "start" });
}

$("file").addEventListener("change", (e) => {
  segment(e.target.files[0]);
  e.target.value = "";  // choosing the same file again is a new upload
});
$("opacity").addEventListener("input", drawOverlay);
$("key-row").addEventListener("submit", async (e) => {
  e.preventDefault();  // the button and Enter both use the key; the page stays
  sessionStorage.setItem("fcnseg-key", $("key").value);
  if (await loadModel() && lastFile) segment(lastFile);  // retry what the key blocked
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
