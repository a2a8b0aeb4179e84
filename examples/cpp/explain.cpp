// Grad-CAM, guided backprop and LRP of one photo with a gradtap explanation graph, in C++17.
//   explain MODEL.gradtap.onnx IMAGE.png|jpg OUT_PREFIX [INPUT.f32]
// Writes OUT_PREFIX_gradcam.png / .f32 (map at tap resolution), OUT_PREFIX_guided.png / .f32
// ([3, H, W]) and, where the graph carries the LRP walk, OUT_PREFIX_lrp.png / .f32 ([H, W]).
// INPUT.f32 (float32 [1, 3, H, W]) replaces the image decoding and resizing.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <regex>
#include <string>
#include <tuple>
#include <vector>

using Floats = std::vector<float>;

static std::string match(const std::string& text, const std::string& pattern) {
  std::smatch m;
  return std::regex_search(text, m, std::regex(pattern)) ? m[1].str() : "";
}

// The model's preprocessing (metadata gradtap.resize): resize the shorter side to `size` with
// area averaging when shrinking (bilinear when growing), centre-crop H x W, RGB in [0, 1], CHW.
static Floats preprocess(const char* path, const std::string& resize, int H, int W) {
  int w, h, n;
  unsigned char* rgb = stbi_load(path, &w, &h, &n, 3);
  if (!rgb) throw std::runtime_error(std::string("cannot read image ") + path);
  Floats src(rgb, rgb + w * h * 3);
  stbi_image_free(rgb);
  for (float& v : src) v /= 255.0f;
  int rh = H, rw = W;
  if (match(resize, "\"policy\": \"([a-z_]+)\"") == "shorter_side_center_crop") {
    int s = std::stoi(match(resize, "\"size\": (\\d+)"));
    if (h <= w) rh = s, rw = std::max(int(double(s) * w / h), W);
    else rh = std::max(int(double(s) * h / w), H), rw = s;
  }
  Floats big(size_t(rh) * rw * 3);
  stbir_filter filter = (rh <= h && rw <= w) ? STBIR_FILTER_BOX : STBIR_FILTER_TRIANGLE;
  stbir_resize_float_generic(src.data(), w, h, 0, big.data(), rw, rh, 0, 3, STBIR_ALPHA_CHANNEL_NONE,
                             0, STBIR_EDGE_CLAMP, filter, STBIR_COLORSPACE_LINEAR, nullptr);
  int top = int(std::nearbyint((rh - H) / 2.0)), left = int(std::nearbyint((rw - W) / 2.0));  // half to even
  Floats chw(size_t(3) * H * W);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x)
        chw[(size_t(c) * H + y) * W + x] = big[(size_t(y + top) * rw + x + left) * 3 + c];
  return chw;
}

static void save(const std::string& path, const Floats& v) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// Channels-first floats to an 8-bit PNG, scaled so [lo, hi] spans 0..255.
static void save_png(const std::string& path, const float* v, int c, int h, int w, float lo, float hi) {
  std::vector<unsigned char> px(size_t(h) * w * c);
  for (int k = 0; k < c; ++k)
    for (int i = 0; i < h * w; ++i)
      px[size_t(i) * c + k] = (unsigned char)std::clamp(255.0f * (v[k * h * w + i] - lo) / (hi - lo + 1e-12f), 0.0f, 255.0f);
  stbi_write_png(path.c_str(), w, h, c, px.data(), w * c);
}

int main(int argc, char** argv) try {
  if (argc < 4) {
    std::fprintf(stderr, "usage: explain MODEL.onnx IMAGE OUT_PREFIX [INPUT.f32]\n");
    return 2;
  }
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "gradtap");
  Ort::Session session(env, argv[1], Ort::SessionOptions());
  Ort::AllocatorWithDefaultOptions alloc;
  Ort::ModelMetadata meta = session.GetModelMetadata();
  auto get = [&](const char* key) { return std::string(meta.LookupCustomMetadataMapAllocated(key, alloc).get()); };
  std::string size = get("gradtap.input_size"), tap = get("gradtap.default_tap");
  int H = std::stoi(match(size, "\\[(\\d+),")), W = std::stoi(match(size, ", (\\d+)\\]"));
  int classes = int(session.GetOutputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape()[1]);

  Floats x(size_t(3) * H * W);
  if (argc > 4) std::ifstream(argv[4], std::ios::binary).read(reinterpret_cast<char*>(x.data()), x.size() * 4);
  else x = preprocess(argv[2], get("gradtap.resize"), H, W);

  // One call per method: every input is required; seed_top1 = 1 explains the predicted class.
  auto run = [&](int64_t relu_rule, int64_t compute, std::vector<std::string> names) {
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Floats seed(classes, 0.0f);
    float top1 = 1.0f;
    int64_t objective = 0, xs[] = {1, 3, H, W}, ss[] = {1, classes};
    std::vector<Ort::Value> in;
    in.push_back(Ort::Value::CreateTensor<float>(mem, x.data(), x.size(), xs, 4));
    in.push_back(Ort::Value::CreateTensor<float>(mem, seed.data(), seed.size(), ss, 2));
    in.push_back(Ort::Value::CreateTensor<int64_t>(mem, &relu_rule, 1, nullptr, 0));
    in.push_back(Ort::Value::CreateTensor<float>(mem, &top1, 1, nullptr, 0));
    in.push_back(Ort::Value::CreateTensor<int64_t>(mem, &objective, 1, nullptr, 0));
    in.push_back(Ort::Value::CreateTensor<int64_t>(mem, &compute, 1, nullptr, 0));
    const char* inputs[] = {"input", "seed", "relu_rule", "seed_top1", "objective", "compute"};
    std::vector<const char*> outputs;
    for (auto& n : names) outputs.push_back(n.c_str());
    return session.Run(Ort::RunOptions{nullptr}, inputs, in.data(), 6, outputs.data(), outputs.size());
  };

  // Grad-CAM: compute = 1 stops the backward pass at the tap. map = relu(sum_k mean(dA_k) A_k)
  auto cam = run(0, 1, {"logits", "tap/" + tap, "grad/tap/" + tap});
  auto shape = cam[1].GetTensorTypeAndShapeInfo().GetShape();
  int K = int(shape[1]), h = int(shape[2]), w = int(shape[3]);
  const float *logits = cam[0].GetTensorData<float>(), *A = cam[1].GetTensorData<float>(),
              *G = cam[2].GetTensorData<float>();
  Floats map(size_t(h) * w, 0.0f);
  for (int k = 0; k < K; ++k) {
    double mean = 0;
    for (int i = 0; i < h * w; ++i) mean += G[k * h * w + i];
    mean /= h * w;
    for (int i = 0; i < h * w; ++i) map[i] += float(mean) * A[k * h * w + i];
  }
  for (float& v : map) v = std::max(v, 0.0f);
  int best = int(std::max_element(logits, logits + classes) - logits);
  std::printf("class %d logit %.4f\n", best, logits[best]);
  save(std::string(argv[3]) + "_gradcam.f32", map);
  save_png(std::string(argv[3]) + "_gradcam.png", map.data(), 1, h, w, 0.0f,
           *std::max_element(map.begin(), map.end()));

  // Guided backprop: relu_rule = 1, compute = 2 (down to the input).
  auto guided = run(1, 2, {"grad/input"});
  const float* g = guided[0].GetTensorData<float>();
  Floats grad(g, g + 3 * H * W);
  float peak = 1e-12f;
  for (float v : grad) peak = std::max(peak, std::fabs(v));
  save(std::string(argv[3]) + "_guided.f32", grad);
  save_png(std::string(argv[3]) + "_guided.png", grad.data(), 3, H, W, -peak, peak);

  // LRP with zennit's EpsilonPlus composite: one more relu_rule code (metadata
  // gradtap.relu_rules), compute = 2. Relevance of the logit: sum over channels, times the logit.
  std::string code = match(get("gradtap.relu_rules"), "\"lrp_epsilon_plus\": (\\d+)");
  if (!code.empty()) {
    auto lrp = run(std::stoll(code), 2, {"grad/input"});
    const float* r = lrp[0].GetTensorData<float>();
    Floats rel(size_t(H) * W, 0.0f);
    for (int k = 0; k < 3; ++k)
      for (int i = 0; i < H * W; ++i) rel[i] += r[k * H * W + i] * logits[best];
    float top = 1e-12f;
    for (float v : rel) top = std::max(top, std::fabs(v));
    save(std::string(argv[3]) + "_lrp.f32", rel);
    save_png(std::string(argv[3]) + "_lrp.png", rel.data(), 1, H, W, -top, top);
  }

  if (const char* n = std::getenv("GRADTAP_REPEAT")) {  // time per call (bench/embedding.py)
    for (auto [rule, compute, out] : {std::tuple{0, 1, "gradcam"}, std::tuple{1, 2, "guided"}}) {
      std::vector<std::string> names = compute == 1 ? std::vector<std::string>{"logits", "tap/" + tap, "grad/tap/" + tap}
                                                    : std::vector<std::string>{"grad/input"};
      auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < std::atoi(n); ++i) run(rule, compute, names);
      std::chrono::duration<double, std::milli> ms = std::chrono::steady_clock::now() - start;
      std::printf("%s_ms %.3f\n", out, ms.count() / std::atoi(n));
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "explain: %s\n", e.what());
  return 1;
}
