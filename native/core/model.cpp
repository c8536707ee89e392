// Model lifetime, checkpoint I/O, and the entry points that turn plain batches into tensors and back.
#include <chrono>
#include <functional>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "model.h"

namespace tunekit {

static void require(bool ok, const char* code, const std::string& msg) {
  if (!ok) throw Error(code, msg);
}

std::shared_ptr<Model> create_model(const ModelSpec& spec) {
  auto m = std::make_shared<Model>();
  m->spec = spec;
  m->dtype = parse_dtype(spec.dtype);
  if (spec.device == "cuda") {
    require(torch::cuda::is_available(), "E_DEVICE",
            "device 'cuda' requested but this libtorch has no CUDA support or no GPU is visible; build against a CUDA "
            "libtorch (npm run build:cmake) on a machine with a GPU");
    m->device = torch::Device(torch::kCUDA);
  } else {
    require(spec.device == "cpu", "E_ARG", "device must be 'cpu' or 'cuda', got '" + spec.device + "'");
  }
  require(spec.vocab_size > 0 && spec.hidden_size > 0 && spec.num_layers > 0 && spec.num_heads > 0, "E_CONFIG",
          "config needs positive vocab_size, hidden size, layer count and head count");
  require(spec.hidden_size % spec.num_heads == 0 || spec.family == "llama", "E_CONFIG",
          "hidden size must be divisible by the number of attention heads");
  torch::NoGradGuard no_grad;
  // Fresh parameters (e.g. a new classification head) come from their own seeded stream, not the global one.
  auto saved = rng_state();
  torch::manual_seed(spec.init_seed);
  if (spec.family == "gpt2") gpt2_build(*m);
  else if (spec.family == "llama") llama_build(*m);
  else if (spec.family == "distilbert") distilbert_build(*m);
  else throw Error("E_CONFIG", "unknown model_type '" + spec.family + "' (supported: gpt2, distilbert, llama)");
  set_rng_state(saved);
  return m;
}

Output Model::run(const torch::Tensor& ids, const torch::Tensor& in_mask) {
  auto mask = in_mask;
  if (past() == 0) {  // with a filled cache the mask already spans prefix and virtual positions
    if (int64_t n = virtual_tokens(); n > 0 && mask.defined()) mask = torch::cat({torch::ones({mask.size(0), n}, mask.options()), mask}, 1);
    prefix_values = prefix_tokens() > 0 ? prefix_table(*this) : torch::Tensor();
  }
  if (spec.family == "gpt2") return gpt2_forward(*this, ids, mask);
  if (spec.family == "llama") return llama_forward(*this, ids, mask);
  return distilbert_forward(*this, ids, mask);
}

std::vector<ParamInfo> parameters(Model& m) {
  std::vector<ParamInfo> out;
  for (const auto& name : m.order) {
    const auto& t = m.params.at(name);
    out.push_back({name, scalar_name(t.scalar_type()), t.sizes().vec(), t.numel(), t.requires_grad(), t.grad().defined()});
  }
  return out;
}

void set_trainable(Model& m, const std::vector<std::string>& names, bool trainable) {
  for (const auto& n : names) {
    auto it = m.params.find(n);
    if (it == m.params.end()) throw Error("E_STATE", "model has no parameter '" + n + "'");
    auto t = it->second;  // a handle onto the same storage and autograd metadata
    t.set_requires_grad(trainable);
    // A frozen parameter keeps no gradient, so it costs no memory and the optimizer skips it.
    if (!trainable) t.mutable_grad() = torch::Tensor();
  }
}

void set_training(Model& m, bool training) { m.training = training; }

// ---- safetensors -------------------------------------------------------------------------------------------

static torch::ScalarType safetensors_dtype(const std::string& s) {
  if (s == "F32") return torch::kFloat32;
  if (s == "F16") return torch::kFloat16;
  if (s == "BF16") return torch::kBFloat16;
  throw Error("E_FORMAT", "unsupported safetensors dtype '" + s + "' (supported: F32, F16, BF16)");
}

static std::string safetensors_name(torch::ScalarType t) {
  if (t == torch::kFloat32) return "F32";
  if (t == torch::kFloat16) return "F16";
  if (t == torch::kBFloat16) return "BF16";
  if (t == torch::kUInt8) return "U8";
  if (t == torch::kInt64) return "I64";
  throw Error("E_FORMAT", "cannot store dtype " + scalar_name(t) + " in safetensors");
}

static std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); i++) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

std::vector<torch::Tensor> read_safetensors(const std::string& path, const std::vector<TensorEntry>& entries) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  require(f.good(), "E_FILE", "cannot open '" + path + "'");
  int64_t size = f.tellg();
  std::vector<torch::Tensor> out;
  for (const auto& e : entries) {
    auto dt = safetensors_dtype(e.dtype);
    int64_t numel = 1;
    for (auto d : e.shape) {
      require(d >= 0, "E_FORMAT", path + ": tensor '" + e.name + "' has a negative dimension");
      numel *= d;
    }
    int64_t nbytes = numel * int64_t(c10::elementSize(dt));
    require(e.begin >= 0 && e.end >= e.begin && e.end <= size, "E_FORMAT",
            path + ": tensor '" + e.name + "' lies outside the file (truncated file or lying header)");
    require(e.end - e.begin == nbytes, "E_FORMAT",
            path + ": tensor '" + e.name + "' has " + std::to_string(e.end - e.begin) + " bytes but its dtype and shape need " +
                std::to_string(nbytes));
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(dt));
    f.seekg(e.begin);
    f.read(static_cast<char*>(t.data_ptr()), nbytes);
    require(f.good(), "E_FILE", path + ": read failed for tensor '" + e.name + "'");
    out.push_back(t);
  }
  return out;
}

void load_safetensors(Model& m, const std::string& path, const std::vector<TensorEntry>& entries) {
  auto tensors = read_safetensors(path, entries);
  // The stored tensors by name (never an adapter's stand-in for them).
  auto stored = [&](const std::string& n) -> torch::Tensor& {
    auto it = m.params.find(n);
    if (it == m.params.end()) throw Error("E_STATE", "model has no parameter '" + n + "'");
    return it->second;
  };
  // Check every shape before touching any weight, so a bad file leaves the model as it was.
  for (size_t i = 0; i < entries.size(); i++) {
    const auto& p = stored(entries[i].name);
    require(p.sizes() == tensors[i].sizes(), "E_SHAPE",
            path + ": tensor '" + entries[i].name + "' has shape " + shape_str(tensors[i].sizes()) +
                " but config.json implies " + shape_str(p.sizes()));
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < entries.size(); i++) stored(entries[i].name).detach().copy_(tensors[i]);
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::ostringstream h;
  h << "{\"__metadata__\":{\"format\":\"pt\"}";
  int64_t offset = 0;
  std::vector<torch::Tensor> cpu;
  for (const auto& [name, t] : tensors) {
    auto c = t.detach().to(torch::kCPU).contiguous();
    int64_t n = c.numel() * int64_t(c.element_size());
    h << ",\"" << name << "\":{\"dtype\":\"" << safetensors_name(c.scalar_type()) << "\",\"shape\":" << shape_str(c.sizes())
      << ",\"data_offsets\":[" << offset << "," << offset + n << "]}";
    offset += n;
    cpu.push_back(c);
  }
  h << "}";
  std::string header = h.str();
  while (header.size() % 8) header += ' ';
  FILE* f = std::fopen(path.c_str(), "wb");
  require(f != nullptr, "E_FILE", "cannot write '" + path + "'");
  uint64_t len = header.size();
  bool ok = std::fwrite(&len, 8, 1, f) == 1 && std::fwrite(header.data(), 1, len, f) == len;
  for (const auto& c : cpu) {
    size_t n = c.numel() * c.element_size();
    ok = ok && (n == 0 || std::fwrite(c.data_ptr(), 1, n, f) == n);
  }
  ok = ok && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  ok = (std::fclose(f) == 0) && ok;
  require(ok, "E_FILE", "write failed for '" + path + "' (disk full?)");
}

void save_safetensors(Model& m, const std::string& path, const std::vector<std::string>& names, const std::vector<std::string>& keys) {
  if (!keys.empty() && keys.size() != names.size()) throw Error("E_ARG", "save: keys must pair one to one with names");
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  const auto& list = names.empty() ? m.order : names;
  for (size_t i = 0; i < list.size(); i++) {
    const auto& name = list[i];
    if (name.rfind("@prefix:", 0) == 0) {  // a prefix adapter's keys and values as PEFT saves them: [n, layers * 2 * kv_dim]
      auto a = m.adapters.find(name.substr(8));
      if (a == m.adapters.end() || a->second.prefix.empty()) throw Error("E_STATE", "no prefix adapter named '" + name.substr(8) + "'");
      torch::NoGradGuard g;
      auto t = prefix_table(m, &a->second);
      tensors.emplace_back(keys.empty() ? name : keys[i], t.reshape({t.size(0), -1}).contiguous());
      continue;
    }
    auto it = m.params.find(name);  // the stored tensor itself, never an adapter's stand-in
    if (it == m.params.end()) throw Error("E_STATE", "model has no parameter '" + name + "'");
    tensors.emplace_back(keys.empty() ? name : keys[i], it->second);
  }
  write_safetensors(path, tensors);
}

// ---- batches ------------------------------------------------------------------------------------------------

struct Tensors {
  torch::Tensor ids, mask, labels;
};

static Tensors to_tensors(const Model& m, const Batch& b) {
  require(b.batch > 0 && b.seq > 0, "E_SHAPE", "inputIds must be a non-empty [batch, seq] array");
  require(int64_t(b.input_ids.size()) == b.batch * b.seq, "E_SHAPE", "inputIds has the wrong number of elements");
  int64_t V = m.spec.vocab_size;
  for (auto id : b.input_ids)
    require(id >= 0 && id < V, "E_RANGE", "token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
  if (m.spec.family != "llama") {  // llama's rotary positions have no table to run off
    // Virtual tokens take positions, and so does a prefix where positions continue after it (gpt2).
    int64_t extra = m.virtual_tokens() + (m.spec.family == "gpt2" ? m.prefix_tokens() : 0);
    require(b.seq + extra <= m.spec.max_positions, "E_RANGE",
            "sequence length " + std::to_string(b.seq) + (extra ? " + " + std::to_string(extra) + " virtual tokens" : "") +
                " exceeds max_position_embeddings " + std::to_string(m.spec.max_positions));
  }
  Tensors t;
  auto i32 = torch::TensorOptions().dtype(torch::kInt32);
  t.ids = torch::from_blob(const_cast<int32_t*>(b.input_ids.data()), {b.batch, b.seq}, i32).to(m.device, torch::kLong);
  if (!b.attention_mask.empty()) {
    require(int64_t(b.attention_mask.size()) == b.batch * b.seq, "E_SHAPE", "attentionMask must have the shape of inputIds");
    for (auto v : b.attention_mask) require(v == 0 || v == 1, "E_RANGE", "attentionMask values must be 0 or 1");
    t.mask = torch::from_blob(const_cast<int32_t*>(b.attention_mask.data()), {b.batch, b.seq}, i32).to(m.device, torch::kLong);
  }
  if (!b.labels.empty()) {
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    t.labels = torch::from_blob(const_cast<float*>(b.labels.data()), b.labels_shape, f32).to(m.device);
  }
  return t;
}

static torch::Tensor loss_of(const Model& m, const Output& out, const torch::Tensor& labels) {
  const auto& task = m.spec.task;
  auto check_range = [&](const torch::Tensor& l, int64_t hi, const char* what) {
    auto bad = ((l < 0) & (l != -100)) | (l >= hi);
    require(!bad.any().item<bool>(), "E_RANGE",
            std::string("labels must be -100 (ignored) or in [0, ") + std::to_string(hi) + ") for " + what);
  };
  if (task == "causal-lm" || task == "masked-lm") {
    // Behind a soft prompt, the virtual positions predict nothing (PEFT prepends -100 labels).
    torch::Tensor labels_in = labels;
    if (int64_t n = m.virtual_tokens(); n > 0 && labels.dim() == 2)
      labels_in = torch::cat({torch::full({labels.size(0), n}, -100.0, labels.options()), labels}, 1);
    const auto& labels = labels_in;
    require(labels.dim() == 2 && labels.sizes() == out.logits.sizes().slice(0, 2), "E_SHAPE",
            "labels for a language model must have the shape of inputIds");
    auto l = labels.to(torch::kLong);
    check_range(l, m.spec.vocab_size, "a language model");
    auto logits = out.logits.to(torch::kFloat32);
    if (task == "causal-lm") {  // predict token t+1 from position t: shift the labels, not the (large) logits
      l = torch::cat({l.slice(1, 1), torch::full({l.size(0), 1}, -100, l.options())}, 1);
    }
    return torch::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), l.reshape({-1}), {}, at::Reduction::Mean, -100);
  }
  require(task == "sequence-classification", "E_STATE", "a " + task + " model computes no loss");
  require(labels.dim() == 1 && labels.size(0) == out.logits.size(0), "E_SHAPE", "classification labels must be [batch]");
  if (m.spec.num_labels == 1) return torch::mse_loss(out.logits.to(torch::kFloat32).squeeze(-1), labels);
  auto l = labels.to(torch::kLong);
  check_range(l, m.spec.num_labels, "classification");
  return torch::cross_entropy_loss(out.logits.to(torch::kFloat32), l, {}, at::Reduction::Mean, -100);
}

static FloatArray to_floats(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  FloatArray a;
  a.shape = c.sizes().vec();
  a.data.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  return a;
}

ForwardResult forward(Model& m, const Batch& b, bool want_logits) {
  auto t = to_tensors(m, b);
  torch::NoGradGuard no_grad;
  auto out = m.run(t.ids, t.mask);
  ForwardResult r;
  // A feature-extraction model answers with its last hidden state, as transformers' base models do.
  if (want_logits) r.logits = to_floats(out.logits.defined() ? out.logits : out.hidden);
  if (t.labels.defined()) {
    r.has_loss = true;
    r.loss = loss_of(m, out, t.labels).item<double>();
  }
  return r;
}

double backward(Model& m, const Batch& b, double loss_scale) {
  auto t = to_tensors(m, b);
  require(t.labels.defined(), "E_ARG", "backward needs labels");
  auto loss = loss_of(m, m.run(t.ids, t.mask), t.labels);
  double value = loss.item<double>();
  // Refuse before autograd runs: a non-finite loss would poison every accumulated gradient.
  require(std::isfinite(value), "E_NAN",
          std::string("loss is ") + (std::isnan(value) ? "NaN" : "infinite") + "; no gradient was accumulated");
  (loss * loss_scale).backward();
  return value;
}

FloatArray embed(Model& m, const Batch& b, const std::string& pooling) {
  auto t = to_tensors(m, b);
  torch::NoGradGuard no_grad;
  auto h = m.run(t.ids, t.mask).hidden;
  if (int64_t n = m.virtual_tokens(); n > 0 && t.mask.defined()) t.mask = torch::cat({torch::ones({t.mask.size(0), n}, t.mask.options()), t.mask}, 1);
  torch::Tensor pooled;
  if (pooling == "cls") {
    pooled = h.select(1, 0);
  } else if (pooling == "mean") {
    auto w = (t.mask.defined() ? t.mask : torch::ones({h.size(0), h.size(1)}, t.ids.options())).to(h.scalar_type()).unsqueeze(-1);
    pooled = (h * w).sum(1) / w.sum(1).clamp_min(1);
  } else if (pooling == "last") {
    int64_t T = h.size(1);
    auto last = t.mask.defined()
                    ? (torch::arange(T, t.mask.options()) * t.mask).argmax(-1)
                    : torch::full({h.size(0)}, T - 1, t.ids.options());
    pooled = h.index({torch::arange(h.size(0), last.options()), last});
  } else {
    throw Error("E_ARG", "pooling must be 'cls', 'mean' or 'last', got '" + pooling + "'");
  }
  return to_floats(pooled);
}

std::vector<std::vector<int32_t>> generate(Model& m, const Batch& b, const GenerateSpec& g) {
  require(m.spec.task == "causal-lm", "E_STATE", "generate() needs a causal-lm model");
  auto t = to_tensors(m, b);
  c10::InferenceMode inference;  // lighter than NoGradGuard per op, and nothing made here is ever differentiated
  auto gen = at::make_generator<at::CPUGeneratorImpl>(g.seed);
  auto ids = t.ids;
  auto mask = t.mask.defined() ? t.mask : torch::ones_like(ids);
  auto done = torch::zeros({ids.size(0)}, torch::TensorOptions().dtype(torch::kBool).device(m.device));
  // With the cache, each step feeds only the newest token; `keys` is the mask over everything the cache holds.
  KVCache kv;
  kv.k.resize(m.spec.num_layers);
  kv.v.resize(m.spec.num_layers);
  struct Reset {
    Model& m;
    ~Reset() { m.cache = nullptr; }
  } reset{m};
  torch::Tensor input = ids, keys;
  const int64_t extra = m.virtual_tokens() + m.prefix_tokens();
  if (g.use_cache) {
    m.cache = &kv;
    kv.capacity = ids.size(1) + extra + g.max_new_tokens;
  }
  for (int64_t step = 0; step < g.max_new_tokens; step++) {
    if (m.spec.family != "llama" && ids.size(1) + extra >= m.spec.max_positions) break;
    auto logits = m.run(input, kv.len > 0 ? keys : mask).logits.select(1, -1).to(torch::kFloat32);
    if (g.use_cache && !keys.defined()) keys = torch::cat({torch::ones({mask.size(0), kv.len - ids.size(1)}, mask.options()), mask}, 1);
    torch::Tensor next;
    if (!g.do_sample) {
      next = logits.argmax(-1);
    } else {
      logits = logits / g.temperature;
      if (g.top_k > 0) {
        auto kth = std::get<0>(logits.topk(std::min(g.top_k, logits.size(-1)), -1)).select(-1, -1).unsqueeze(-1);
        logits = logits.masked_fill(logits < kth, -INFINITY);
      }
      if (g.top_p < 1.0) {
        auto [sorted, order] = logits.sort(-1, true);
        auto cum = sorted.softmax(-1).cumsum(-1);
        auto drop = (cum - sorted.softmax(-1)) > g.top_p;  // keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted.masked_fill(drop, -INFINITY));
      }
      auto probs = logits.softmax(-1).to(torch::kCPU);
      next = torch::multinomial(probs, 1, false, gen).squeeze(-1).to(m.device);
    }
    if (g.eos_token_id >= 0) {
      next = next.masked_fill(done, g.eos_token_id);
      done = done | (next == g.eos_token_id);
    }
    ids = torch::cat({ids, next.unsqueeze(1)}, 1);
    mask = torch::cat({mask, torch::ones({mask.size(0), 1}, mask.options())}, 1);
    if (g.use_cache) {
      input = next.unsqueeze(1);
      keys = torch::cat({keys, torch::ones({keys.size(0), 1}, keys.options())}, 1);
    } else {
      input = ids;
    }
    if (g.eos_token_id >= 0 && done.all().item<bool>()) break;
  }
  auto c = ids.to(torch::kCPU, torch::kInt32).contiguous();
  std::vector<std::vector<int32_t>> out(c.size(0));
  for (int64_t i = 0; i < c.size(0); i++) out[i].assign(c[i].data_ptr<int32_t>(), c[i].data_ptr<int32_t>() + c.size(1));
  return out;
}

void zero_grad(Model& m) {
  for (auto& [_, p] : m.params)
    if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
}

double grad_norm(Model& m) {
  std::vector<torch::Tensor> norms;
  for (auto& [_, p] : m.params)
    if (p.grad().defined()) norms.push_back(p.grad().norm(2).to(torch::kFloat32));
  return norms.empty() ? 0.0 : torch::stack(norms).norm(2).item<double>();
}

void manual_seed(uint64_t seed) { torch::manual_seed(seed); }

std::vector<uint8_t> rng_state() {
  auto s = at::detail::getDefaultCPUGenerator().get_state();
  return std::vector<uint8_t>(s.data_ptr<uint8_t>(), s.data_ptr<uint8_t>() + s.numel());
}

void set_rng_state(const std::vector<uint8_t>& state) {
  auto t = torch::from_blob(const_cast<uint8_t*>(state.data()), {int64_t(state.size())}, torch::kUInt8).clone();
  try {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(t);
  } catch (const c10::Error& e) {
    throw Error("E_FORMAT", "invalid RNG state (" + std::to_string(state.size()) + " bytes)");
  }
}

bool cuda_available() { return torch::cuda::is_available(); }

double bench_matmul(int64_t n, int64_t iters) {
  if (n < 1 || iters < 1) throw Error("E_ARG", "bench_matmul needs n >= 1 and iters >= 1");
  torch::NoGradGuard g;
  auto a = torch::randn({n, n}), b = torch::randn({n, n}), c = torch::empty({n, n});
  // The better of the two matmul libraries inside this libtorch (MKL through aten, oneDNN through matmul_nt), since
  // tunekit's dense layers use both: the ceiling is the best square product the machine gives either.
  auto rate = [&](const std::function<void()>& product) {
    product();  // warm-up: thread pool, caches, oneDNN's kernel generation
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < iters; i++) product();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return 2.0 * double(n) * double(n) * double(n) * double(iters) / s / 1e9;
  };
  double mkl = rate([&] { torch::mm_out(c, a, b); });
  double onednn = rate([&] { c = matmul_nt(a, b, torch::Tensor()); });
  return std::max(mkl, onednn);
}

std::string torch_info() {
  auto c = cpu_cache_stats();
  auto mib = [](size_t b) { return std::to_string(double(b) / (1 << 20)); };
  return std::string("{\"torch\":\"") + TORCH_VERSION + "\",\"threads\":" + std::to_string(at::get_num_threads()) +
         ",\"cpuAllocator\":\"" + (c.active ? "caching" : "system") + "\",\"cpuCache\":{\"inUseMiB\":" + mib(c.in_use) +
         ",\"cachedMiB\":" + mib(c.cached) + ",\"peakMiB\":" + mib(c.peak) + ",\"hits\":" + std::to_string(c.hits) +
         ",\"misses\":" + std::to_string(c.misses) + "},\"gemm\":\"" + (onednn_gemm() ? "onednn+mkl" : "aten") + "\"}";
}

}  // namespace tunekit
