// The model as the core sees it: Hugging Face-named tensors plus the family's forward.
#pragma once
#include <torch/torch.h>

#include <map>
#include <unordered_map>

#include "api.h"

namespace tunekit {

struct Output {
  torch::Tensor hidden;  // [batch, seq, hidden], after the final norm
  torch::Tensor logits;  // per-token (causal/masked LM) or per-sequence (classification)
};

// One LoRA-adapted module of one adapter: its update is scaling * B @ A, with dropout on the adapter's input only.
struct LoraModule {
  std::string A, B;  // parameter names
  double scaling = 1, dropout = 0;
  bool fan_in_fan_out = false;  // GPT-2's Conv1D keeps its weight as [in, out]
};

// A named set of added parameters (LoRA for now) that can be switched on per call.
struct Adapter {
  std::string method;
  std::unordered_map<std::string, LoraModule> lora;          // module name -> its LoRA
  std::unordered_map<std::string, std::string> overrides;    // base parameter -> its trainable copy (modules_to_save)
  bool merged = false;
  // Bottleneck adapters (Houlsby et al. 2019): module whose output they adapt -> their parameters' name prefix.
  std::unordered_map<std::string, std::string> bottleneck;
  std::string nonlinearity = "relu";
  // Prefix tuning: `prefix` is the [tokens, layers * 2 * kv_dim] embedding, or with a reparameterisation MLP the
  // [tokens, kv_dim] embedding fed through prefix_mlp ("<name>.transform.{0,2}.{weight,bias}").
  std::string prefix, prefix_mlp;
  int64_t prefix_tokens = 0;
  std::string prompt;  // soft prompt tuning: the [virtual_tokens, hidden] embedding parameter prepended to the input
  int64_t virtual_tokens = 0;
};

// Keys and values of every layer for the positions seen so far, so that decoding one more token costs one position's
// work (prefix and virtual tokens included once, at the first step).
struct KVCache {
  std::vector<torch::Tensor> k, v;  // per layer, [batch, kv_heads, len, head_dim]: views into kbuf/vbuf when those exist
  std::vector<torch::Tensor> kbuf, vbuf;  // per layer, [batch, kv_heads, capacity, head_dim], filled in place
  int64_t len = 0;
  int64_t capacity = 0;  // positions to reserve at the first step; 0: grow by concatenation
};

class Model {
 public:
  ModelSpec spec;
  std::string base;  // prefix of the backbone's names in this task's HF class: "transformer.", "model.", "distilbert." or ""
  std::vector<std::string> order;  // parameter names in creation order
  std::unordered_map<std::string, torch::Tensor> params;
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  bool training = false;

  std::map<std::string, Adapter> adapters;
  std::string active;  // the adapter in use, or "" for the bare base model

  // A parameter by name; under an active adapter, its modules_to_save copies stand in for the base tensors.
  const torch::Tensor& P(const std::string& name) const;
  const Adapter* active_adapter() const;
  // Virtual tokens the active adapter prepends to every sequence (0 without a prompt-tuning adapter).
  int64_t virtual_tokens() const;
  // The input's token embeddings from `table`, after the active adapter's soft prompt when there is one.
  torch::Tensor token_embeddings(const std::string& table, const torch::Tensor& ids) const;
  std::string word_embeddings_name() const;
  // Prefix tuning: the number of prefix positions, and layer i's key and value prefixes [batch, kv_heads, n, head_dim]
  // (computed once per forward by begin_forward).
  int64_t prefix_tokens() const;
  std::pair<torch::Tensor, torch::Tensor> prefix_kv(int64_t layer, int64_t batch) const;
  mutable torch::Tensor prefix_values;  // [n, layers * 2, kv_heads, head_dim] for the running forward
  KVCache* cache = nullptr;             // set by generate() while it decodes
  // Past positions in the cache (0 without one): the input then holds only new tokens, the mask all positions.
  int64_t past() const { return cache ? cache->len : 0; }
  bool has(const std::string& name) const { return params.count(name) > 0; }
  void add(const std::string& name, torch::Tensor t);

  // nn.Linear (weight [out, in]) and GPT-2's Conv1D (weight [in, out]), looked up by module name.
  torch::Tensor linear(const std::string& module, const torch::Tensor& x) const;
  torch::Tensor conv1d(const std::string& module, const torch::Tensor& x) const;
  torch::Tensor layer_norm(const std::string& module, const torch::Tensor& x) const;
  torch::Tensor rms_norm(const std::string& module, const torch::Tensor& x) const;
  torch::Tensor dropout(const torch::Tensor& x, double p) const;
  // The output of `module`, passed through the active adapter's bottleneck when it has one there.
  torch::Tensor adapted(const std::string& module, torch::Tensor y) const;
  // GPT-2 keeps every projection inside its blocks as a Conv1D ([in, out] weight); its heads are nn.Linear.
  bool is_conv1d(const std::string& module) const {
    return spec.family == "gpt2" && module.find("h.") != std::string::npos &&
           (module.find(".attn.") != std::string::npos || module.find(".mlp.") != std::string::npos);
  }

  Output run(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);
};

// Per-family builders and forwards (models/*.cpp).
void gpt2_build(Model& m);
Output gpt2_forward(Model& m, const torch::Tensor& ids, const torch::Tensor& mask);
void llama_build(Model& m);
Output llama_forward(Model& m, const torch::Tensor& ids, const torch::Tensor& mask);
void distilbert_build(Model& m);
Output distilbert_forward(Model& m, const torch::Tensor& ids, const torch::Tensor& mask);

// Prefix tuning (peft/prefix.cpp): the active adapter's key/value prefixes, [n, layers * 2, kv_heads, head_dim].
torch::Tensor prefix_table(const Model& m, const Adapter* adapter = nullptr);

// Shared by every adapter kind (peft/lora.cpp): a new adapter's name must be free and contain no '.'; each
// modules_to_save parameter gets the adapter's own trainable copy, queued in `created` and recorded in a.overrides.
void check_new_adapter(const Model& m, const std::string& name);
void add_saved_copies(const Model& m, const std::string& adapter, const std::vector<std::string>& bases, Adapter& a,
                      std::vector<std::pair<std::string, torch::Tensor>>& created);

// LoRA's linear (peft/lora.cpp): base(x) + scaling * B(A(dropout(x))), with its own backward that never forms the
// frozen weight's gradient.
torch::Tensor lora_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& A,
                          const torch::Tensor& B, const LoraModule& spec, bool training);

// Shared blocks (models/layers.cpp).
torch::Tensor activation(const std::string& name, const torch::Tensor& x);
// A dense layer, y = x W^T + b (fan_in_fan_out: W stored [in, out], as GPT-2's Conv1D), differentiable, through
// oneDNN or aten, whichever is faster for the shape (gemm.cpp). bias may be undefined.
torch::Tensor dense(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, bool fan_in_fan_out = false);
// x2 [n, in] times w_oi^T ([out, in], any strides) plus bias, not differentiable: the products inside backward passes.
// A [rows, out] product viewed back with the leading dimensions of `like` (the [..., in] input it came from).
torch::Tensor unflatten_rows(const torch::Tensor& y2, const torch::Tensor& like);
bool onednn_gemm();  // whether dense() and matmul_nt() can use oneDNN in this process
torch::Tensor matmul_nt(const torch::Tensor& x2, const torch::Tensor& w_oi, const torch::Tensor& bias);
// Boolean [batch, 1, seq, seq] mask of allowed (query, key) pairs, or undefined when plain causal/full attention needs none.
torch::Tensor attention_mask_4d(const torch::Tensor& mask, int64_t seq, bool causal);
// The same with `prefix` always-visible key positions in front: [batch, 1, seq, prefix + seq].
torch::Tensor prefix_mask_4d(const torch::Tensor& mask, int64_t batch, int64_t seq, int64_t prefix, bool causal, torch::Device device);
// Decoding with a cache: `seq` new queries after `past` cached keys; `mask` covers all past + seq key positions.
// Undefined when nothing needs masking (one new token, no padding): attention then runs without causality.
torch::Tensor cached_mask_4d(const torch::Tensor& mask, int64_t batch, int64_t seq, int64_t past, torch::Device device);
// Appends this step's keys/values to layer i's cache (or fills it) and returns the keys/values attention should use.
std::pair<torch::Tensor, torch::Tensor> with_cache(Model& m, int64_t layer, torch::Tensor k, torch::Tensor v);
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask4d,
                        bool causal, double dropout, double scale, bool training);
// Index of the token each sequence is classified from (transformers' *ForSequenceClassification rule).
torch::Tensor last_token_index(const Model& m, const torch::Tensor& ids);

std::string scalar_name(torch::ScalarType t);
torch::ScalarType parse_dtype(const std::string& s);

}  // namespace tunekit
