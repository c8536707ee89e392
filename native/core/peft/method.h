// A PEFT method, as the core sees one: an adapter is a set of added parameters plus hooks the forward calls.
// Each peft/<method>.cpp implements AdapterMethod and registers a factory under its name; the registry
// (peft/registry.cpp) does everything methods share: names, modules_to_save copies, ownership, switching, deletion.
#pragma once
#include <set>

#include "../model.h"

namespace tunekit {

using Created = std::vector<std::pair<std::string, torch::Tensor>>;

struct AdapterMethod {
  std::string method;
  std::vector<std::string> params;                         // every parameter this adapter owns, in creation order
  std::unordered_map<std::string, std::string> overrides;  // base parameter -> its trainable copy (modules_to_save)
  bool merged = false;
  virtual ~AdapterMethod() = default;

  // A linear layer's product y = x W^T + b: a method may replace it (LoRA), rescale its input or output (IA3) or
  // transform its output (bottleneck adapters). W and b are the tensors in use (modules_to_save copies included).
  virtual torch::Tensor linear(const ForwardContext& c, const std::string& module, const torch::Tensor& x, const torch::Tensor& W,
                               const torch::Tensor& b, bool fan_in_fan_out) const {
    return dense(x, W, b, fan_in_fan_out);
  }
  // Whether the adapter's whole effect is an additive term on linear outputs, delta(): then rows under it can share a
  // forward with rows under other adapters (decode.cpp gathers each adapter's rows).
  virtual bool gathers() const { return false; }
  // That term for rows x of `module` (LoRA: scaling * B A x), or undefined where the adapter does not touch it.
  virtual torch::Tensor delta(const ForwardContext&, const std::string&, const torch::Tensor&) const { return {}; }
  // The input's token embeddings, [batch, seq, hidden] -> [batch, virtual + seq, hidden] (soft prompts).
  virtual torch::Tensor input_embeddings(const ForwardContext&, const torch::Tensor& x) const { return x; }
  virtual int64_t virtual_tokens() const { return 0; }
  // Attention keys/values in front of every layer's own (prefix tuning): [n, layers * 2, kv_heads, head_dim].
  virtual int64_t prefix_tokens() const { return 0; }
  virtual torch::Tensor prefix_values(const Model&) const { return {}; }
  // The base weights with the adapter folded in (sign 1) or taken back out (sign -1), as new tensors by parameter
  // name: the registry checks them all before any weight changes.
  using Folded = std::vector<std::pair<std::string, torch::Tensor>>;
  virtual Folded folded(const Model&, double) const { throw Error("E_STATE", method + " adapters do not fold into the weights"); }
  // A tensor PEFT saves that is not a parameter (prefix tuning saves its projection's output), by the name the TS
  // layer asks for.
  virtual torch::Tensor exported(const Model&, const std::string& what) const {
    throw Error("E_ARG", method + " adapters export no tensor '" + what + "'");
  }
};

// Reads an AdapterSpec's fields by name; finish() refuses any field no method read (a typo must not change a run).
class SpecReader {
 public:
  explicit SpecReader(const AdapterSpec& s) : s_(s) {}
  const std::string& adapter() const { return s_.adapter; }
  double number(const std::string& key, double fallback);
  int64_t integer(const std::string& key, int64_t fallback);
  bool flag(const std::string& key, bool fallback);
  std::string string(const std::string& key, const std::string& fallback);
  std::vector<std::string> strings(const std::string& key);
  std::vector<int64_t> integers(const std::string& key);
  void finish() const;

 private:
  const AdapterSpec& s_;
  std::set<std::string> read_;
};

// Builds one adapter of a method: its parameters go into `created` (float32, on the CPU; the registry moves them).
using MethodFactory = std::unique_ptr<AdapterMethod> (*)(const Model& m, SpecReader& spec, Created& created);
bool register_method(const std::string& name, MethodFactory factory);

// The module names an adapter spec targets, each checked to be a linear layer of m (not an embedding table).
std::vector<std::string> linear_targets(const Model& m, const std::vector<std::string>& modules, const char* method);
// The [in, out] sizes of a linear module, whichever way its weight is stored.
std::pair<int64_t, int64_t> linear_shape(const Model& m, const std::string& module);

}  // namespace tunekit
