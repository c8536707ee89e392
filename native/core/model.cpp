// Model lifetime: the family registry, creating a model from its spec, parameters and their trainability.
#include <torch/cuda.h>

#include "models/family.h"
#include "peft/method.h"

namespace tunekit {

static std::map<std::string, Family>& families() {
  static std::map<std::string, Family> registry;  // built during static initialisation, read-only afterwards
  return registry;
}

const Family& register_family(Family f) {
  auto name = f.name;
  return families()[name] = std::move(f);
}

const Family& find_family(const std::string& name) {
  auto it = families().find(name);
  if (it != families().end()) return it->second;
  std::string known;
  for (const auto& [n, _] : families()) known += (known.empty() ? "" : ", ") + n;
  throw Error("E_CONFIG", "unknown model_type '" + name + "' (supported: " + known + ")");
}

// In place: a temporary the size of the largest matrix (the embedding) would double the peak of creating a model.
torch::Tensor init_normal(std::vector<int64_t> shape) { return torch::randn(shape).mul_(0.02); }

void add_linear(Model& m, const std::string& name, int64_t in, int64_t out, bool bias) {
  m.add(name + ".weight", init_normal({out, in}));
  if (bias) m.add(name + ".bias", torch::zeros({out}));
}

void add_layer_norm(Model& m, const std::string& name, int64_t width) {
  m.add(name + ".weight", torch::ones({width}));
  m.add(name + ".bias", torch::zeros({width}));
}

Model::Model() = default;
Model::~Model() = default;

torch::Tensor& Model::stored(const std::string& name) {
  auto it = params.find(name);
  if (it == params.end()) throw Error("E_STATE", "model has no parameter '" + name + "'");
  return it->second;
}

const torch::Tensor& Model::stored(const std::string& name) const { return const_cast<Model*>(this)->stored(name); }

void Model::add(const std::string& name, torch::Tensor t) {
  if (!params.count(name)) order.push_back(name);
  params[name] = t.to(device, dtype).set_requires_grad(true);
}

const AdapterMethod* Model::adapter(const std::string& name) const {
  if (name.empty()) return nullptr;
  auto it = adapters.find(name);
  if (it == adapters.end()) throw Error("E_ARG", "the model has no adapter named '" + name + "'");
  return it->second.get();
}

bool Model::is_conv1d(const std::string& module) const { return family->conv1d && family->conv1d(module); }

std::string Model::word_embeddings() const { return base + family->word_embeddings; }

// The spec's shape fields, checked before anything divides by them (the TS layer checks too; the core never trusts it).
static void check_dims(const ModelSpec& s, const Family& f) {
  auto positive = [&](int64_t v, const char* field) {
    require(v > 0, "E_CONFIG", std::string(field) + " must be a positive integer, got " + std::to_string(v));
  };
  positive(s.vocab_size, "vocab_size");
  positive(s.hidden_size, "hidden_size");
  positive(s.num_layers, "num_hidden_layers");
  positive(s.num_heads, "num_attention_heads");
  positive(s.num_kv_heads, "num_key_value_heads");
  positive(s.head_dim, "head_dim");
  positive(s.intermediate_size, "intermediate_size");
  require(s.num_heads % s.num_kv_heads == 0, "E_CONFIG",
          "num_attention_heads (" + std::to_string(s.num_heads) + ") must be a multiple of num_key_value_heads (" +
              std::to_string(s.num_kv_heads) + ")");
  if (f.positions == Family::Positions::rotary) {
    require(s.head_dim % 2 == 0, "E_CONFIG", "rotary embeddings need an even head_dim, got " + std::to_string(s.head_dim));
  } else {
    require(
        s.head_dim * s.num_heads == s.hidden_size, "E_CONFIG",
        "hidden size " + std::to_string(s.hidden_size) + " must be divisible by the " + std::to_string(s.num_heads) + " attention heads");
    positive(s.max_positions, "max_position_embeddings");
  }
  require(s.num_labels > 0, "E_CONFIG", "num_labels must be a positive integer");
}

std::shared_ptr<Model> create_model(const ModelSpec& spec) {
  auto m = std::make_shared<Model>();
  m->spec = spec;
  m->family = &find_family(spec.family);
  m->dtype = parse_dtype(spec.dtype);
  if (spec.device == "cuda") {
    require(torch::cuda::is_available(), "E_DEVICE",
            "device 'cuda' requested but this libtorch has no CUDA support or no GPU is visible; build against a CUDA "
            "libtorch (npm run build:cmake) on a machine with a GPU");
    m->device = torch::Device(torch::kCUDA);
  } else {
    require(spec.device == "cpu", "E_ARG", "device must be 'cpu' or 'cuda', got '" + spec.device + "'");
  }
  check_dims(spec, *m->family);
  m->base = spec.task == "feature-extraction" ? "" : m->family->backbone;
  torch::NoGradGuard no_grad;
  // Fresh parameters (e.g. a new classification head) come from their own seeded stream, not the global one.
  auto saved = rng_state();
  torch::manual_seed(spec.init_seed);
  try {
    m->family->build(*m);
  } catch (...) {
    set_rng_state(saved);
    throw;
  }
  set_rng_state(saved);
  return m;
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
    auto t = m.stored(n);  // a handle onto the same storage and autograd metadata
    t.set_requires_grad(trainable);
    // A frozen parameter keeps no gradient, so it costs no memory and the optimizer skips it.
    if (!trainable) t.mutable_grad() = torch::Tensor();
  }
}

void set_training(Model& m, bool training) { m.training = training; }

void set_autocast(Model& m, const std::string& dtype) {
  auto t = parse_dtype(dtype);
  if (t == torch::kFloat32) {
    m.autocast.reset();
    return;
  }
  require(m.device.is_cuda() || t == torch::kBFloat16, "E_DEVICE", "float16 autocast needs a CUDA device; on the CPU use bfloat16");
  m.autocast = t;
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

}  // namespace tunekit
