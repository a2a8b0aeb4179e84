// The explanation graph from JavaScript, shared by the browser page and the Node example:
// preprocessing as the graph's metadata says, Grad-CAM and guided backprop calls.
// `ort` is the onnxruntime module the caller imported (onnxruntime-web or onnxruntime-node).

// The graph's metadata_props (ModelProto field 14: key 1, value 2), read from the file's bytes:
// onnxruntime's JavaScript API does not expose them. Only the top level of the protobuf is walked.
export function metadata(bytes) {
  const text = new TextDecoder();
  const varint = (b, at) => {
    let v = 0, mul = 1;
    for (;;) {
      const byte = b[at.i++];
      v += (byte & 0x7f) * mul;
      if (byte < 0x80) return v;
      mul *= 128;
    }
  };
  const fields = (b, each) => {
    const at = { i: 0 };
    while (at.i < b.length) {
      const key = varint(b, at), type = key % 8;
      if (type === 0) varint(b, at);
      else if (type === 1 || type === 5) at.i += type === 1 ? 8 : 4;
      else if (type === 2) {
        const n = varint(b, at);
        each(Math.floor(key / 8), b.subarray(at.i, at.i + n));
        at.i += n;
      } else throw new Error(`not an ONNX model (protobuf wire type ${type})`);
    }
  };
  const meta = {};
  fields(bytes, (field, body) => {
    if (field !== 14) return;
    const entry = {};
    fields(body, (f, v) => (entry[f] = text.decode(v)));
    meta[entry[1]] = entry[2] ?? "";
  });
  return meta;
}

// Per output index of an n -> m resize, the source indices and weights: area averaging when
// shrinking (OpenCV INTER_AREA), bilinear with half-pixel centres otherwise (INTER_LINEAR).
function taps(n, m, area) {
  const scale = n / m, out = [];
  for (let i = 0; i < m; i++) {
    const idx = [], w = [];
    if (area) {
      const lo = i * scale, hi = (i + 1) * scale;
      for (let s = Math.floor(lo); s < Math.min(Math.ceil(hi), n); s++) {
        idx.push(s);
        w.push((Math.min(hi, s + 1) - Math.max(lo, s)) / scale);
      }
    } else {
      const x = Math.min(Math.max((i + 0.5) * scale - 0.5, 0), n - 1), s = Math.floor(x);
      idx.push(s, Math.min(s + 1, n - 1));
      w.push(1 - (x - s), x - s);
    }
    out.push([idx, w]);
  }
  return out;
}

// RGBA bytes [h, w, 4] to the model input: float32 [1, 3, H, W], RGB in [0, 1].
export function preprocess(rgba, w, h, meta) {
  const [H, W] = JSON.parse(meta["gradtap.input_size"]);
  const spec = JSON.parse(meta["gradtap.resize"] ?? '{"policy": "stretch"}');
  let rh = H, rw = W;
  if (spec.policy === "shorter_side_center_crop") {
    if (h <= w) [rh, rw] = [spec.size, Math.max(Math.trunc((spec.size * w) / h), W)];
    else [rh, rw] = [Math.max(Math.trunc((spec.size * h) / w), H), spec.size];
  }
  const area = rh <= h && rw <= w;
  const half = (v) => (v % 1 === 0.5 && Math.floor(v) % 2 === 0 ? Math.floor(v) : Math.round(v)); // to even
  const top = half((rh - H) / 2), left = half((rw - W) / 2);
  const rows = taps(h, rh, area).slice(top, top + H), cols = taps(w, rw, area).slice(left, left + W);
  const x = new Float32Array(3 * H * W), line = new Float32Array(w * 3);
  rows.forEach(([ri, rwt], y) => {
    line.fill(0);
    ri.forEach((r, k) => {
      for (let i = 0; i < w * 3; i++) line[i] += rwt[k] * rgba[(r * w + Math.trunc(i / 3)) * 4 + (i % 3)];
    });
    cols.forEach(([ci, cwt], xo) => {
      for (let c = 0; c < 3; c++) {
        let v = 0;
        ci.forEach((s, k) => (v += cwt[k] * line[s * 3 + c]));
        x[(c * H + y) * W + xo] = Math.min(Math.max(v / 255, 0), 1);
      }
    });
  });
  return { x, H, W };
}

// Every input is required: a plain full pass is relu_rule 0, seed_top1 0, objective 0, compute 2.
function feeds(ort, x, H, W, classes, reluRule, compute) {
  const i64 = (v) => new ort.Tensor("int64", BigInt64Array.from([BigInt(v)]), []);
  return {
    input: new ort.Tensor("float32", x, [1, 3, H, W]),
    seed: new ort.Tensor("float32", new Float32Array(classes), [1, classes]),
    relu_rule: i64(reluRule),
    seed_top1: new ort.Tensor("float32", Float32Array.from([1]), []), // explain the top-1 class
    objective: i64(0),
    compute: i64(compute),
  };
}

// Grad-CAM of the predicted class (compute = 1: the backward pass stops at the tap), guided
// backprop (relu_rule = 1, compute = 2) and, where the graph carries the LRP walk, LRP with
// zennit's EpsilonPlus composite (its relu_rule code from the metadata, compute = 2; the relevance
// of the logit, summed over channels; null otherwise). Returns the maps and the class.
export async function explain(ort, session, meta, x, H, W) {
  const tap = meta["gradtap.default_tap"];
  const classes = JSON.parse(meta["gradtap.labels"]).length;
  const cam = await session.run(feeds(ort, x, H, W, classes, 0, 1), ["logits", `tap/${tap}`, `grad/tap/${tap}`]);
  const logits = cam.logits.data, A = cam[`tap/${tap}`], G = cam[`grad/tap/${tap}`].data;
  const [, K, h, w] = A.dims;
  const map = new Float32Array(h * w);
  for (let k = 0; k < K; k++) {
    let mean = 0;
    for (let i = 0; i < h * w; i++) mean += G[k * h * w + i];
    mean /= h * w;
    for (let i = 0; i < h * w; i++) map[i] += mean * A.data[k * h * w + i];
  }
  map.forEach((v, i) => (map[i] = Math.max(v, 0)));
  const target = logits.indexOf(Math.max(...logits));
  const guided = await session.run(feeds(ort, x, H, W, classes, 1, 2), ["grad/input"]);
  const code = JSON.parse(meta["gradtap.relu_rules"] ?? "{}").lrp_epsilon_plus;
  let lrp = null;
  if (code !== undefined) {
    const r = (await session.run(feeds(ort, x, H, W, classes, code, 2), ["grad/input"]))["grad/input"].data;
    lrp = new Float32Array(H * W);
    for (let k = 0; k < 3; k++) for (let i = 0; i < H * W; i++) lrp[i] += r[k * H * W + i] * logits[target];
  }
  return { target, label: JSON.parse(meta["gradtap.labels"])[target], gradcam: map, camShape: [h, w],
           guided: guided["grad/input"].data, lrp };
}

// Milliseconds per Grad-CAM call and per guided-backprop call, averaged over n calls each.
export async function timings(ort, session, meta, x, H, W, n) {
  const tap = meta["gradtap.default_tap"], classes = JSON.parse(meta["gradtap.labels"]).length;
  const time = async (rule, compute, names) => {
    const start = performance.now();
    for (let i = 0; i < n; i++) await session.run(feeds(ort, x, H, W, classes, rule, compute), names);
    return (performance.now() - start) / n;
  };
  return { gradcam: await time(0, 1, ["logits", `tap/${tap}`, `grad/tap/${tap}`]), guided: await time(1, 2, ["grad/input"]) };
}
