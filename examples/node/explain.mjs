// Grad-CAM, guided backprop and LRP of a photo with onnxruntime-node.
//   node explain.mjs MODEL.gradtap.onnx IMAGE.png|jpg OUT_PREFIX [INPUT.f32]
// Writes OUT_PREFIX_gradcam.f32 (map at tap resolution), OUT_PREFIX_guided.f32 ([3, H, W]),
// OUT_PREFIX_lrp.f32 ([H, W], where the graph carries the LRP walk) and a PNG of each.
// INPUT.f32 (float32 [1, 3, H, W]) replaces the decoding and resizing.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { explain, metadata, preprocess, timings } from "../web/gradtap.mjs";

// packages from `make setup` (build/npm), or the folder GRADTAP_NPM names
const require = createRequire(process.env.GRADTAP_NPM ?? new URL("../../build/npm/package.json", import.meta.url));
const ort = require("onnxruntime-node");
const { PNG } = require("pngjs");
const jpeg = require("jpeg-js");

function decode(path) {
  const bytes = readFileSync(path);
  const img = bytes[0] === 0x89 ? PNG.sync.read(bytes) : jpeg.decode(bytes, { useTArray: true });
  return { rgba: img.data, w: img.width, h: img.height };
}

function savePng(path, data, channels, h, w, lo, hi) {
  const png = new PNG({ width: w, height: h });
  for (let i = 0; i < h * w; i++) {
    for (let c = 0; c < 3; c++) {
      const v = data[(channels === 3 ? c : 0) * h * w + i];
      png.data[i * 4 + c] = Math.max(0, Math.min(255, (255 * (v - lo)) / (hi - lo || 1)));
    }
    png.data[i * 4 + 3] = 255;
  }
  writeFileSync(path, PNG.sync.write(png));
}

const [model, image, out, raw] = process.argv.slice(2);
if (!out) {
  console.error("usage: node explain.mjs MODEL.onnx IMAGE OUT_PREFIX [INPUT.f32]");
  process.exit(2);
}
try {
  const bytes = readFileSync(model);
  const meta = metadata(bytes);
  const session = await ort.InferenceSession.create(bytes);
  const [H, W] = JSON.parse(meta["gradtap.input_size"]);
  let x;
  if (raw) x = new Float32Array(new Uint8Array(readFileSync(raw)).buffer);
  else {
    const { rgba, w, h } = decode(image);
    x = preprocess(rgba, w, h, meta).x;
  }
  const r = await explain(ort, session, meta, x, H, W);
  console.log(`class ${r.target} ${r.label}`);
  writeFileSync(`${out}_gradcam.f32`, Buffer.from(r.gradcam.buffer));
  writeFileSync(`${out}_guided.f32`, Buffer.from(r.guided.buffer, r.guided.byteOffset, r.guided.byteLength));
  savePng(`${out}_gradcam.png`, r.gradcam, 1, ...r.camShape, 0, Math.max(...r.gradcam));
  const peak = Math.max(...r.guided.map(Math.abs));
  savePng(`${out}_guided.png`, r.guided, 3, H, W, -peak, peak);
  if (r.lrp) {
    writeFileSync(`${out}_lrp.f32`, Buffer.from(r.lrp.buffer));
    const top = Math.max(...r.lrp.map(Math.abs));
    savePng(`${out}_lrp.png`, r.lrp, 1, H, W, -top, top);
  }
  if (process.env.GRADTAP_REPEAT) { // time per call (bench/embedding.py)
    const n = Number(process.env.GRADTAP_REPEAT), t = await timings(ort, session, meta, x, H, W, n);
    console.log(`gradcam_ms ${t.gradcam.toFixed(3)}\nguided_ms ${t.guided.toFixed(3)}`);
  }
} catch (err) {
  console.error(`explain: ${err.message}`);
  process.exit(1);
}
