// A static server for the page, on 127.0.0.1 only:
//   node serve.mjs MODEL.gradtap.onnx [--port 8000] [--files DIR] [--result FILE]
// / -> this folder, /ort/ -> onnxruntime-web's dist/, /model.onnx -> MODEL, /files/ -> DIR;
// POST /result writes the body to FILE (then the server exits).
import { createReadStream, existsSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const model = resolve(args[0] ?? "model.onnx");
const npm = process.env.GRADTAP_NPM ? resolve(process.env.GRADTAP_NPM, "..") : join(here, "../../build/npm");
const roots = { "/ort/": join(npm, "node_modules/onnxruntime-web/dist"), "/files/": option("--files", here), "/": here };
const types = { ".html": "text/html", ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
                ".png": "image/png", ".jpg": "image/jpeg", ".onnx": "application/octet-stream" };

function file(url) {
  const path = decodeURIComponent(new URL(url, "http://x").pathname);
  if (path === "/model.onnx") return model;
  if (path === "/") return join(here, "index.html");
  const prefix = Object.keys(roots).find((p) => path.startsWith(p));
  const full = normalize(join(roots[prefix], path.slice(prefix.length)));
  return full.startsWith(normalize(roots[prefix])) ? full : null; // no way out of a root
}

const server = createServer((req, res) => {
  if (req.method === "POST" && req.url === "/result") {
    const parts = [];
    req.on("data", (d) => parts.push(d));
    req.on("end", () => {
      writeFileSync(option("--result", "result.json"), Buffer.concat(parts));
      res.end("ok");
      server.close(() => process.exit(0));
    });
    return;
  }
  const path = file(req.url);
  if (!path || !existsSync(path) || !statSync(path).isFile()) return res.writeHead(404).end("not found");
  res.writeHead(200, { "Content-Type": types[extname(path)] ?? "application/octet-stream" });
  createReadStream(path).pipe(res);
});
server.listen(Number(option("--port", 8000)), "127.0.0.1", () => console.log(`http://127.0.0.1:${server.address().port}/`));
