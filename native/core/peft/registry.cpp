// What every PEFT method shares: the method registry, reading specs, adapter names, modules_to_save copies,
// ownership of the parameters an adapter creates, switching, folding and deleting adapters.
#include <cmath>

#include "../models/family.h"
#include "method.h"

namespace tunekit {

static std::map<std::string, MethodFactory>& methods() {
  static std::map<std::string, MethodFactory> registry;  // filled during static initialisation
  return registry;
}

bool register_method(const std::string& name, MethodFactory factory) {
  methods()[name] = factory;
  return true;
}

double SpecReader::number(const std::string& key, double fallback) {
  read_.insert(key);
  auto it = s_.numbers.find(key);
  if (it == s_.numbers.end()) return fallback;
  // Every method's numbers, in one place: a NaN scaling would pass every comparison a method makes.
  require(std::isfinite(it->second), "E_ARG", s_.method + " option '" + key + "' must be a finite number");
  return it->second;
}

int64_t SpecReader::integer(const std::string& key, int64_t fallback) {
  double v = number(key, double(fallback));
  require(v == std::floor(v) && std::abs(v) < 9e15, "E_ARG", key + " must be an integer, got " + std::to_string(v));
  return int64_t(v);
}

bool SpecReader::flag(const std::string& key, bool fallback) {
  read_.insert(key);
  auto it = s_.flags.find(key);
  return it == s_.flags.end() ? fallback : it->second;
}

std::string SpecReader::string(const std::string& key, const std::string& fallback) {
  read_.insert(key);
  auto it = s_.strings.find(key);
  return it == s_.strings.end() ? fallback : it->second;
}

std::vector<std::string> SpecReader::strings(const std::string& key) {
  read_.insert(key);
  auto it = s_.lists.find(key);
  return it == s_.lists.end() ? std::vector<std::string>{} : it->second;
}

std::vector<int64_t> SpecReader::integers(const std::string& key) {
  read_.insert(key);
  auto it = s_.integer_lists.find(key);
  return it == s_.integer_lists.end() ? std::vector<int64_t>{} : it->second;
}

void SpecReader::finish() const {
  auto check = [&](const auto& fields) {
    for (const auto& [key, _] : fields) require(read_.count(key) > 0, "E_ARG", s_.method + " adapters take no option '" + key + "'");
  };
  check(s_.numbers);
  check(s_.flags);
  check(s_.strings);
  check(s_.lists);
  check(s_.integer_lists);
}

std::pair<int64_t, int64_t> linear_shape(const Model& m, const std::string& module) {
  const auto& W = m.stored(module + ".weight");
  return m.is_conv1d(module) ? std::pair{W.size(0), W.size(1)} : std::pair{W.size(1), W.size(0)};
}

std::vector<std::string> linear_targets(const Model& m, const std::vector<std::string>& modules, const char* method) {
  require(!modules.empty(), "E_ARG", std::string(method) + " needs at least one target module");
  for (const auto& mod : modules) {
    require(m.has(mod + ".weight"), "E_ARG", "target module '" + mod + "' has no weight");
    require(m.stored(mod + ".weight").dim() == 2, "E_ARG", "target module '" + mod + "' is not a linear layer");
    for (const auto& e : m.family->embeddings)
      require(mod != m.base + e, "E_ARG", "target module '" + mod + "' is an embedding; " + method + " here adapts linear layers only");
  }
  return modules;
}

std::vector<std::string> add_adapter(Model& m, const AdapterSpec& spec) {
  const auto& name = spec.adapter;
  require(!name.empty() && name.find('.') == std::string::npos && name.find(':') == std::string::npos, "E_ARG",
          "adapter name must be non-empty and contain no '.' or ':'");
  require(!m.adapters.count(name), "E_STATE", "the model already has an adapter named '" + name + "'");
  auto factory = methods().find(spec.method);
  if (factory == methods().end()) {
    std::string known;
    for (const auto& [n, _] : methods()) known += (known.empty() ? "" : ", ") + n;
    throw Error("E_ARG", "unknown PEFT method '" + spec.method + "' (known: " + known + ")");
  }
  SpecReader reader(spec);
  Created created;
  auto a = factory->second(m, reader, created);
  a->method = spec.method;
  // modules_to_save: the adapter's own trainable copy of each named base parameter.
  for (const auto& base : reader.strings("modulesToSave")) {
    require(m.has(base), "E_ARG", "modules_to_save: the model has no parameter '" + base + "'");
    auto dot = base.rfind('.');
    auto copy = base.substr(0, dot) + ".modules_to_save." + name + base.substr(dot);
    created.emplace_back(copy, m.stored(base).detach().clone());
    a->overrides[base] = copy;
  }
  reader.integer("seed", 0);  // every method may be seeded, whether or not it draws random numbers
  reader.finish();
  // Nothing is added until the whole spec was valid, so a refused adapter leaves the model as it was.
  for (auto& [n, t] : created) {
    require(!m.has(n), "E_STATE", "parameter '" + n + "' already exists");
    a->params.push_back(n);
  }
  for (auto& [n, t] : created) m.add(n, t);
  m.adapters[name] = std::move(a);
  return m.adapters[name]->params;
}

void set_adapter(Model& m, const std::string& name) {
  m.adapter(name);  // E_ARG when there is no such adapter
  if (!m.active.empty() && m.active != name && m.adapters.at(m.active)->merged)
    throw Error("E_STATE", "adapter '" + m.active + "' is merged into the weights; unmerge it before switching");
  m.active = name;
}

static void fold(Model& m, double sign) {
  require(!m.active.empty(), "E_STATE", "no adapter is active");
  auto& a = *m.adapters.at(m.active);
  require((sign > 0) != a.merged, "E_STATE", "adapter '" + m.active + (a.merged ? "' is already merged" : "' is not merged"));
  torch::NoGradGuard g;
  auto folded = a.folded(m, sign);
  for (const auto& [name, t] : folded)
    require(torch::isfinite(t).all().item<bool>(), "E_NAN",
            std::string(sign > 0 ? "merging" : "unmerging") + " adapter '" + m.active + "' would put non-finite values into '" + name +
                "'; the weights are unchanged");
  for (const auto& [name, t] : folded) m.stored(name).copy_(t);
  a.merged = sign > 0;
}

void merge_adapter(Model& m) { fold(m, 1); }
void unmerge_adapter(Model& m) { fold(m, -1); }

void delete_adapter(Model& m, const std::string& name) {
  auto it = m.adapters.find(name);
  require(it != m.adapters.end(), "E_ARG", "the model has no adapter named '" + name + "'");
  require(!it->second->merged, "E_STATE", "adapter '" + name + "' is merged; unmerge it first");
  for (const auto& n : it->second->params) m.params.erase(n);
  m.order.erase(std::remove_if(m.order.begin(), m.order.end(), [&](const std::string& n) { return !m.params.count(n); }), m.order.end());
  if (m.active == name) m.active = "";
  m.adapters.erase(it);
}

}  // namespace tunekit
