// The onnxfcn demo page: a converted model (onnxfcn metadata: window, stride, offset, input)
// run with onnxruntime-web on a dropped image; the picture is scan's --picture classes.
//
// Query parameters: model (default digits_fcn.onnx, beside this page), image (default the
// digits scene), ort (onnxruntime-web's ort.wasm.min.mjs; default jsDelivr's copy), scale (display
// pixels per image pixel, default: the image fills about 720 pixels).
const params = new URLSearchParams(location.search);
const ORT = params.get("ort") || "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.31.1/dist/ort.wasm.min.mjs";
const MODEL = params.get("model") || "digits_fcn.onnx";
const IMAGE = params.get("image") || "../../models/digits_scene.png";
const LABELS = params.get("labels") || "../../models/digits_labels.txt";
const ALPHA = 0.55;  // scan's picture
const TOP = Number(params.get("top") || 10), NMS = Number(params.get("nms") || 0.3);  // scan's --top, --nms
const PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
  [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120],
  [152, 223, 138], [255, 152, 150], [197, 176, 213], [196, 156, 148], [247, 182, 210], [199, 199, 199],
  [219, 219, 141], [158, 218, 229]];

const status = (text) => { document.getElementById("status").textContent = text; };
const pair = (text) => text.split(",").map(Number);

async function loadImage(src) {
  const img = new Image();
  img.src = src;
  await img.decode();
  return img;
}

// The model's input for an image: grey (Pillow's "L" weights) or RGB, divided by 255 (scan's
// default preprocessing), N x C x H x W or N x H x W x C as the metadata says.
function toInput(img, channels, layout) {
  const c = document.createElement("canvas");
  c.width = img.naturalWidth;
  c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const { data } = ctx.getImageData(0, 0, c.width, c.height);
  const h = c.height, w = c.width, n = h * w;
  const x = new Float32Array(channels * n);
  for (let p = 0; p < n; p++) {
    const r = data[4 * p], g = data[4 * p + 1], b = data[4 * p + 2];
    if (channels === 1) {
      x[p] = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16) / 255;
    } else {
      for (let k = 0; k < 3; k++) {
        const v = data[4 * p + k] / 255;
        if (layout === "NCHW") x[k * n + p] = v; else x[3 * p + k] = v;
      }
    }
  }
  return { x, dims: layout === "NCHW" ? [1, channels, h, w] : [1, h, w, channels], canvas: c };
}

// Per cell: the best class, its score and its confidence (the softmax maximum rescaled so that 0 is a
// uniform guess and 1 certainty), from K x gh x gw scores.
function summarize(scores, k, gh, gw) {
  const best = new Int32Array(gh * gw), top = new Float32Array(gh * gw), sure = new Float32Array(gh * gw);
  for (let p = 0; p < gh * gw; p++) {
    let max = -Infinity, cls = 0;
    for (let c = 0; c < k; c++) if (scores[c * gh * gw + p] > max) { max = scores[c * gh * gw + p]; cls = c; }
    let total = 0;
    for (let c = 0; c < k; c++) total += Math.exp(scores[c * gh * gw + p] - max);
    best[p] = cls;
    top[p] = max;
    sure[p] = k > 1 ? Math.min(1, Math.max(0, (1 / total - 1 / k) / (1 - 1 / k))) : 1;
  }
  return { best, top, sure };
}

// The TOP best cells (by their best score), greedily skipping any whose window overlaps a chosen
// one by more than NMS (intersection over union), as scan --top --nms lists them.
function topCells(best, top, gh, gw, meta) {
  const [wh, ww] = meta.window, [sh, sw] = meta.stride;
  const order = Array.from(top.keys()).sort((a, b) => top[b] - top[a]);
  const chosen = [];
  for (const p of order) {
    if (chosen.length >= TOP) break;
    const i = Math.floor(p / gw), j = p % gw;
    const overlaps = chosen.some((c) => {
      const ih = Math.max(0, wh - Math.abs(c.i - i) * sh), iw = Math.max(0, ww - Math.abs(c.j - j) * sw);
      return (ih * iw) / (2 * wh * ww - ih * iw) > NMS;
    });
    if (!overlaps) chosen.push({ i, j, cls: best[p] });
  }
  return chosen;
}

function draw(img, meta, best, top, sure, gh, gw, labels) {
  const [wh, ww] = meta.window, [sh, sw] = meta.stride, [oh, ow] = meta.offset;
  const scale = Number(params.get("scale")) || Math.max(1, Math.floor(720 / img.naturalWidth));
  const canvas = document.getElementById("picture");
  canvas.width = img.naturalWidth * scale;
  canvas.height = img.naturalHeight * scale;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const pic = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const nearest = (pos, o, win, s, n) => {
    const i = Math.min(n - 1, Math.max(0, Math.round((pos - o - win / 2) / s)));
    return [i, Math.abs(pos - (o + win / 2 + i * s)) <= s / 2];
  };
  for (let y = 0; y < canvas.height; y++) {
    const [i, inY] = nearest((y + 0.5) / scale, oh, wh, sh, gh);
    for (let x = 0; x < canvas.width; x++) {
      const [j, inX] = nearest((x + 0.5) / scale, ow, ww, sw, gw);
      if (!inY || !inX) continue;
      const a = ALPHA * sure[i * gw + j], colour = PALETTE[best[i * gw + j] % PALETTE.length], q = 4 * (y * canvas.width + x);
      for (let k = 0; k < 3; k++) pic.data[q + k] = pic.data[q + k] * (1 - a) + colour[k] * a;
    }
  }
  ctx.putImageData(pic, 0, 0);
  for (const { i, j, cls } of topCells(best, top, gh, gw, meta)) {  // scan's listed cells, boxed and labelled
    const [r, g, b] = PALETTE[cls % PALETTE.length];
    const x0 = (ow + j * sw) * scale, y0 = (oh + i * sh) * scale;
    ctx.strokeStyle = `rgb(${r},${g},${b})`;
    ctx.lineWidth = 2;
    ctx.strokeRect(x0 + 1, y0 + 1, ww * scale - 2, wh * scale - 2);
    ctx.font = "bold 14px sans-serif";
    ctx.lineWidth = 3;
    ctx.strokeStyle = "black";
    ctx.strokeText(labels[cls] ?? String(cls), x0 + 3, y0 + 15);
    ctx.fillStyle = "white";
    ctx.fillText(labels[cls] ?? String(cls), x0 + 3, y0 + 15);
  }
  const present = [...new Set(best)].sort((a, b) => a - b);
  document.getElementById("legend").innerHTML = present.map((c) => {
    const [r, g, b] = PALETTE[c % PALETTE.length];
    return `<span><i style="background: rgb(${r},${g},${b})"></i>${labels[c] ?? c}</span>`;
  }).join("");
}

async function run(ort, session, meta, labels, src) {
  const img = await loadImage(src);
  const inputName = meta.input || session.inputNames[0];
  const { x, dims } = toInput(img, meta.channels, meta.layout);
  const t0 = performance.now();
  const out = await session.run({ [inputName]: new ort.Tensor("float32", x, dims) });
  const ms = performance.now() - t0;
  const scores = out[session.outputNames[0]];
  const [, k, gh, gw] = scores.dims;
  const { best, top, sure } = summarize(scores.data, k, gh, gw);
  draw(img, meta, best, top, sure, gh, gw, labels);
  status(`${img.naturalHeight}x${img.naturalWidth} -> ${gh}x${gw} cells of ${k} classes in ${ms.toFixed(1)} ms ` +
         `(window ${meta.window.join("x")}, stride ${meta.stride.join("x")})`);
  // For the page's test: what it fed and what it got.
  window.onnxfcnDemo = { input: Array.from(x), inputDims: dims, scores: Array.from(scores.data), dims: scores.dims,
                         best: Array.from(best), done: true };
}

async function main() {
  const ort = await import(ORT);
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = ORT.slice(0, ORT.lastIndexOf("/") + 1);
  const bytes = new Uint8Array(await (await fetch(MODEL)).arrayBuffer());
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const meta = readMetadata(bytes);
  const labels = await fetch(LABELS).then((r) => (r.ok ? r.text() : "")).then((t) => t.split("\n").filter(Boolean))
    .catch(() => []);
  await run(ort, session, meta, labels, IMAGE);
  const drop = document.getElementById("drop");
  const use = (file) => run(ort, session, meta, labels, URL.createObjectURL(file)).catch((e) => status(`error: ${e.message}`));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); use(e.dataTransfer.files[0]); });
  document.getElementById("file").addEventListener("change", (e) => use(e.target.files[0]));
}

// onnxfcn's metadata (metadata_props, onnxfcn.*) read from the model's bytes: a protobuf walk
// over ModelProto field 14 (metadata_props: key 1, value 2), and the input's channel count from
// graph field 7 (input) -> type -> tensor_type -> shape.
function readMetadata(bytes) {
  const varint = (buf, at) => { let v = 0, s = 0, b; do { b = buf[at.p++]; v += (b & 0x7f) * 2 ** s; s += 7; } while (b & 0x80); return v; };
  const fields = (buf) => {
    const at = { p: 0 }, out = [];
    while (at.p < buf.length) {
      const tag = varint(buf, at), field = Math.floor(tag / 8), wire = tag & 7;
      if (wire === 0) out.push([field, varint(buf, at)]);
      else if (wire === 2) { const n = varint(buf, at); out.push([field, buf.subarray(at.p, at.p + n)]); at.p += n; }
      else if (wire === 5) { at.p += 4; } else if (wire === 1) { at.p += 8; } else throw new Error("bad model");
    }
    return out;
  };
  const text = (b) => new TextDecoder().decode(b);
  const props = {};
  let graph = null;
  for (const [f, v] of fields(bytes)) {
    if (f === 14) { const kv = Object.fromEntries(fields(v)); props[text(kv[1])] = text(kv[2] ?? new Uint8Array()); }
    if (f === 7) graph = v;
  }
  if (!props["onnxfcn.window"]) throw new Error("not a model converted by onnxfcn (no onnxfcn metadata)");
  const meta = { window: pair(props["onnxfcn.window"]), stride: pair(props["onnxfcn.stride"]),
                 offset: pair(props["onnxfcn.offset"] || "0,0"), layout: props["onnxfcn.input_layout"] || "NCHW",
                 input: props["onnxfcn.input"] };
  for (const [f, v] of fields(graph)) {
    if (f !== 11) continue;  // graph.input
    const vi = Object.fromEntries(fields(v).map(([k, x]) => [k, x]));
    if (meta.input && text(vi[1]) !== meta.input) continue;
    const tensor = Object.fromEntries(fields(Object.fromEntries(fields(vi[2]))[1]));
    const dims = fields(tensor[2]).map(([, d]) => Object.fromEntries(fields(d)));
    const c = dims[meta.layout === "NCHW" ? 1 : 3];
    meta.channels = c && c[1] !== undefined ? c[1] : 3;
    break;
  }
  return meta;
}

main().catch((e) => status(`error: ${e.message}`));
