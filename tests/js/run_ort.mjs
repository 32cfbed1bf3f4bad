// Run an ONNX model on onnxruntime-node or on onnxruntime-web (WebAssembly) in headless Chromium,
// for the runtime tier (tests/interop.py).
//
//   node run_ort.mjs node|web MODEL.onnx DIR
//
// DIR/inputs.json lists the inputs ({name, dtype, dims, file}) whose raw little-endian bytes are
// in DIR/<file>; the outputs are written the same way, DIR/outputs.json and their .bin files, in
// the session's output order. Any failure exits 1 with one line on stderr.
import { readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import { join, dirname, extname } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const ARRAYS = { float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array,
                 uint8: Uint8Array, int8: Int8Array, float16: Uint16Array, bool: Uint8Array };

async function readInputs(dir) {
  const spec = JSON.parse(await readFile(join(dir, "inputs.json"), "utf8"));
  return Promise.all(spec.map(async (s) => ({ ...s, bytes: await readFile(join(dir, s.file)) })));
}

async function writeOutputs(dir, outputs) {
  const spec = [];
  for (const [k, o] of outputs.entries()) {
    const file = `output${k}.bin`;
    await writeFile(join(dir, file), Buffer.from(o.bytes, "base64"));
    spec.push({ name: o.name, dtype: o.dtype, dims: o.dims, file });
  }
  await writeFile(join(dir, "outputs.json"), JSON.stringify(spec));
}

async function runNode(model, inputs) {
  const ort = await import("onnxruntime-node");
  const session = await ort.InferenceSession.create(model, { executionProviders: ["cpu"] });
  const feeds = {};
  for (const i of inputs) {
    const data = new ARRAYS[i.dtype](i.bytes.buffer, i.bytes.byteOffset, i.bytes.byteLength / ARRAYS[i.dtype].BYTES_PER_ELEMENT);
    feeds[i.name] = new ort.Tensor(i.dtype, data, i.dims);
  }
  const results = await session.run(feeds);
  return session.outputNames.map((name) => {
    const t = results[name];
    return { name, dtype: t.type, dims: t.dims,
             bytes: Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString("base64") };
  });
}

const TYPES = { ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".html": "text/html",
                ".onnx": "application/octet-stream" };

// A static server on 127.0.0.1: onnxruntime-web's files and the model, nothing else.
function serve(files) {
  const server = createServer(async (req, res) => {
    const path = files[new URL(req.url, "http://x").pathname];
    if (!path) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { "Content-Type": TYPES[extname(path)] || "application/octet-stream" });
    res.end(await readFile(path));
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

async function runWeb(model, inputs) {
  const { chromium } = await import("playwright-core");
  const dist = join(HERE, "node_modules", "onnxruntime-web", "dist");
  const files = { "/": join(HERE, "blank.html"), "/model.onnx": model };
  for (const f of ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"]) files[`/${f}`] = join(dist, f);
  const server = await serve(files);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${server.address().port}/`);
    const payload = inputs.map((i) => ({ name: i.name, dtype: i.dtype, dims: i.dims, bytes: i.bytes.toString("base64") }));
    return await page.evaluate(async (payload) => {
      const ort = await import("/ort.wasm.min.mjs");
      ort.env.wasm.numThreads = 1;  // no cross-origin isolation here: one thread, as most pages run it
      ort.env.wasm.wasmPaths = "/";
      const session = await ort.InferenceSession.create("/model.onnx", { executionProviders: ["wasm"] });
      const ARR = { float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array,
                    uint8: Uint8Array, int8: Int8Array, float16: Uint16Array, bool: Uint8Array };
      const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
      const feeds = {};
      for (const i of payload) feeds[i.name] = new ort.Tensor(i.dtype, new ARR[i.dtype](b64(i.bytes).buffer), i.dims);
      const results = await session.run(feeds);
      return session.outputNames.map((name) => {
        const t = results[name];
        const u8 = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
        let s = "";
        for (let k = 0; k < u8.length; k += 0x8000) s += String.fromCharCode(...u8.subarray(k, k + 0x8000));
        return { name, dtype: t.type, dims: t.dims, bytes: btoa(s) };
      });
    }, payload);
  } finally {
    await browser.close();
    server.close();
  }
}

const [backend, model, dir] = process.argv.slice(2);
try {
  const inputs = await readInputs(dir);
  const outputs = backend === "web" ? await runWeb(model, inputs) : await runNode(model, inputs);
  await writeOutputs(dir, outputs);
} catch (err) {
  process.stderr.write(String(err && err.message ? err.message : err).split("\n")[0] + "\n");
  process.exit(1);
}
