// The model as the core sees it: Hugging Face-named tensors, the family that runs them, and the per-call context
// every forward receives.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>

#include "api.h"
#include "torch_headers.h"

namespace tunekit {

struct Family;
struct AdapterMethod;

// Data parallelism's hook into backward (distributed/ddp.cpp): told of each loss before autograd runs, so that gradients
// are averaged across processes as they become ready.
struct GradSync {
  virtual ~GradSync() = default;
  virtual void before_backward(const torch::Tensor& loss) = 0;
  // A failed collective inside backward, rethrown with the rank and what to look for.
  [[noreturn]] virtual void failed(const std::exception& e) = 0;
};

struct Output {
  torch::Tensor hidden;           // [batch, seq, hidden], after the final norm
  torch::Tensor logits;           // per-token (causal/masked LM) or per-sequence (classification)
  torch::Tensor sentence_logits;  // the pretraining task's next-sentence head, [batch, 2]; undefined otherwise
};

// Keys and values of every layer for the positions seen so far, so that decoding one more token costs one position's
// work (prefix and virtual tokens included once, at the first step).
struct KVCache {
  std::vector<torch::Tensor> k, v;        // per layer, [batch, kv_heads, len, head_dim]: views into kbuf/vbuf when those exist
  std::vector<torch::Tensor> kbuf, vbuf;  // per layer, [batch, kv_heads, capacity, head_dim], filled in place
  int64_t len = 0;
  int64_t capacity = 0;  // positions to reserve at the first step; 0: grow by concatenation
};

class Model {
 public:
  ModelSpec spec;
  const Family* family = nullptr;
  std::string base;                // prefix of the backbone's names in this task's HF class ("transformer.", "model.", ... or "")
  std::vector<std::string> order;  // parameter names in creation order
  std::unordered_map<std::string, torch::Tensor> params;
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  bool training = false;
  // The dtype autocast runs products and attention in (torch.autocast's op lists), or none: no autocast.
  std::optional<torch::ScalarType> autocast;

  std::shared_ptr<GradSync> grad_sync;  // set while the model trains data-parallel

  std::map<std::string, std::unique_ptr<AdapterMethod>> adapters;
  std::string active;  // the adapter calls use unless told otherwise, or "" for the bare base model

  Model();
  ~Model();
  bool has(const std::string& name) const { return params.count(name) > 0; }
  // The stored tensor by name (never an adapter's stand-in for it).
  torch::Tensor& stored(const std::string& name);
  const torch::Tensor& stored(const std::string& name) const;
  void add(const std::string& name, torch::Tensor t);
  const AdapterMethod* adapter(const std::string& name) const;  // nullptr for ""
  // Whether a module keeps its weight as [in, out] (GPT-2's Conv1D) rather than nn.Linear's [out, in].
  bool is_conv1d(const std::string& module) const;
  // The input token embedding table's parameter name.
  std::string word_embeddings() const;
};

// Everything one forward needs besides the weights: which adapter runs, the KV cache and its past length, the prefix
// keys/values computed for this call, dropout on or off. A forward reads the Model only through a const reference,
// so a policy and its frozen reference, or rows under different adapters, can share one set of weights.
class ForwardContext {
 public:
  const Model& m;
  const AdapterMethod* adapter;
  KVCache* cache;
  bool training;
  // Lower-precision copies of the weights that P() returns instead of the stored ones (generation under a mixed
  // precision: cast once per call rather than at every token), or none.
  const std::unordered_map<std::string, torch::Tensor>* cast_weights = nullptr;

  ForwardContext(const Model& model, const AdapterMethod* adapter, bool training, KVCache* cache = nullptr);
  // Runs the family's forward (virtual tokens and prefix values prepared here, once per call).
  Output run(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);

  // Past positions in the cache (0 without one): the input then holds only new tokens, the mask all positions.
  int64_t past() const { return cache ? cache->len : 0; }
  // Virtual tokens the adapter prepends to every sequence (soft prompt), and prefix key/value positions.
  int64_t virtual_tokens() const;
  int64_t prefix_tokens() const;
  // The position of the first input token: after what the cache holds, or after this call's prefix keys (transformers
  // counts both as past positions).
  int64_t first_position() const { return past() + (prefix_.defined() ? prefix_.size(0) : 0); }
  // A parameter by name; under an adapter, its modules_to_save copies stand in for the base tensors.
  const torch::Tensor& P(const std::string& name) const;
  // nn.Linear or Conv1D by module name, through the adapter's hooks (LoRA, IA3, bottleneck).
  torch::Tensor linear(const std::string& module, const torch::Tensor& x) const;
  torch::Tensor layer_norm(const std::string& module, const torch::Tensor& x, double eps) const;
  torch::Tensor rms_norm(const std::string& module, const torch::Tensor& x) const;
  torch::Tensor dropout(const torch::Tensor& x, double p) const;
  // The input's token embeddings from `table`, after the adapter's soft prompt when it has one.
  torch::Tensor token_embeddings(const std::string& table, const torch::Tensor& ids) const;
  // The keys and values layer i attends over, given its own [batch, kv_heads, seq, head_dim]: behind the adapter's
  // prefix (prefix tuning, before anything is cached) and after what the KV cache holds, which they then join.
  std::pair<torch::Tensor, torch::Tensor> keys_values(int64_t layer, torch::Tensor k, torch::Tensor v);
  // The attention mask of this call: over cached positions, behind a prefix, or plain (causal or bidirectional).
  torch::Tensor mask_4d(const torch::Tensor& mask, int64_t batch, int64_t seq, bool causal) const;
  // Index of the token each sequence is classified from (transformers' *ForSequenceClassification rule).
  torch::Tensor last_token_index(const torch::Tensor& ids) const;

  // A stacked decode step (decode.cpp): each row's count of cached positions, where its new token's position is, and
  // the rows under each adapter when rows do not share one (their LoRA terms gathered per row). Empty otherwise.
  torch::Tensor row_past;
  std::vector<std::pair<const AdapterMethod*, torch::Tensor>> row_groups;
  // Positions of the `T` input tokens: [T] from first_position(), or [batch, T] from row_past.
  torch::Tensor positions(int64_t T, torch::Device device) const;

  // The rows of the flattened [batch, seq] hidden states a masked-LM head scores when only the loss is wanted (the
  // positions with a target), or undefined: every position.
  torch::Tensor lm_rows;
  // A masked-LM head's input: the hidden states of lm_rows as [rows, hidden], or all of them.
  torch::Tensor lm_head_input(const torch::Tensor& hidden) const;

 private:
  torch::Tensor prefix_;  // [n, layers * 2, kv_heads, head_dim] for this call, undefined without one or with a cache
};

// torch.autocast's scope in C++: enabled for one device type and dtype, its cast cache cleared when the outermost
// scope ends, the previous state restored.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, torch::ScalarType dtype);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool was_enabled_;
  torch::ScalarType was_dtype_;
};

// Shared blocks (ops/). Attention masks are boolean [batch, 1, seq, keys] of allowed (query, key) pairs, or undefined
// where plain causal/full attention needs none (see ForwardContext::mask_4d).
// An activation by its transformers name (ops/activations.cpp); GELU's tanh approximation runs as one pass each way on
// CPUs with AVX-512.
torch::Tensor activation(const std::string& name, const torch::Tensor& x);
// activation(gate) * up, as a gated feed-forward (Llama's SwiGLU) computes it; for silu one pass each way on CPUs with
// AVX-512, with the composite's roundings.
torch::Tensor gated_activation(const std::string& name, const torch::Tensor& gate, const torch::Tensor& up);
// A dense layer, y = x W^T + b (fan_in_fan_out: W stored [in, out], as GPT-2's Conv1D), differentiable, through
// oneDNN or aten, whichever is faster for the shape (ops/gemm.cpp). bias may be undefined.
torch::Tensor dense(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, bool fan_in_fan_out = false);
// The input for each of n products that read the same activation x. Under autocast, which casts a float32 activation
// again for every product (it caches casts of weights only), they share one lower-precision copy; each product's
// gradient still comes back to float32 on its own and autograd sums them there, so the arithmetic is autocast's.
// Otherwise x itself, n times.
std::vector<torch::Tensor> product_inputs(const torch::Tensor& x, size_t n);
// A [rows, out] product viewed back with the leading dimensions of `like` (the [..., in] input it came from).
torch::Tensor unflatten_rows(const torch::Tensor& y2, const torch::Tensor& like);
bool onednn_gemm();  // whether dense() and matmul_nt() can use oneDNN in this process
// x2 [n, in] times w_oi^T ([out, in], any strides) plus bias, not differentiable: the products inside backward passes.
torch::Tensor matmul_nt(const torch::Tensor& x2, const torch::Tensor& w_oi, const torch::Tensor& bias);
// RMSNorm as LlamaRMSNorm: normalised in float32, then scaled by weight in x's dtype; one pass each way for float32 on
// the CPU (ops/rms_norm.cpp).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
// Rotary position embedding as transformers' apply_rotary_pos_emb, x * cos + rotate_half(x) * sin, for x
// [batch, heads, seq, head_dim] and cos/sin broadcastable to it; the same result, one pass each way on the CPU
// (ops/rotary.cpp). Under autocast it returns the lower precision, which attention, its reader, computes in.
torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
// q [batch, heads, seq, head_dim]; k and v [batch, kv_heads, keys, head_dim], where kv_heads divides heads
// (grouped-query attention).
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask4d, bool causal,
                        double dropout, double scale, bool training);
// Log-probability of each target class under softmax(logits / temperature), float32 in the targets' shape, from
// [..., classes] logits of any floating dtype and [...] targets, and the mean cross-entropy over targets that are not
// ignore_index; both in float32 without widening all the logits at once (ops/cross_entropy.cpp).
torch::Tensor target_logprobs(const torch::Tensor& logits, const torch::Tensor& targets, double temperature = 1.0);
torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets, int64_t ignore_index = -100);

std::string scalar_name(torch::ScalarType t);
torch::ScalarType parse_dtype(const std::string& s);
std::string shape_str(c10::IntArrayRef s);

inline void require(bool ok, const char* code, const std::string& msg) {
  if (!ok) throw Error(code, msg);
}

// Backpropagates loss * scale into the gradients, through the model's data-parallel sync when it has one.
void run_backward(Model& m, const torch::Tensor& loss, double scale);

}  // namespace tunekit
