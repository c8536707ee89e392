// The core's public surface. Plain C++ types only: the N-API addon includes this file and never torch.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace tunekit {

// Every failure the core reports carries one of DESIGN.md's codes (E_FILE, E_FORMAT, E_SHAPE, E_RANGE, E_NAN, ...).
struct Error : std::runtime_error {
  std::string code;
  Error(std::string c, const std::string& msg) : std::runtime_error(msg), code(std::move(c)) {}
};

// A Hugging Face config, already normalised by the TypeScript layer (n_embd vs hidden_size, rope_parameters, ...).
struct ModelSpec {
  std::string family;  // config.json's model_type: a registered family (models/)
  std::string task;    // causal-lm | sequence-classification | feature-extraction | masked-lm | pretraining
  std::string device = "cpu";
  std::string dtype = "float32";
  int64_t vocab_size = 0, hidden_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t intermediate_size = 0, max_positions = 0, type_vocab_size = 0, num_labels = 2, pad_token_id = -1;
  double norm_eps = 1e-5, rope_theta = 10000.0;
  double embd_dropout = 0, attn_dropout = 0, resid_dropout = 0, classifier_dropout = 0;
  std::string activation = "gelu_new";
  bool tie_word_embeddings = true, attention_bias = false, attention_out_bias = false, mlp_bias = false;
  bool scale_attn_by_inverse_layer_idx = false;
  uint64_t init_seed = 0;
};

struct ParamInfo {
  std::string name, dtype;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  bool trainable = true;
  bool has_grad = false;  // a gradient tensor is currently held
};

// One tensor inside a safetensors file, validated by the TS layer and checked again here.
struct TensorEntry {
  std::string name;   // the model parameter it fills
  std::string dtype;  // F32 | F16 | BF16
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;  // absolute byte offsets in the file
};

struct Batch {
  std::vector<int32_t> input_ids;       // [batch, seq], row-major
  std::vector<int32_t> attention_mask;  // empty, or [batch, seq] of 0/1
  std::vector<float> labels;            // empty, [batch] (classification) or [batch, seq] (causal LM)
  std::vector<int64_t> labels_shape;
  int64_t batch = 0, seq = 0;
};

struct FloatArray {
  std::vector<float> data;
  std::vector<int64_t> shape;
};

struct ForwardResult {
  FloatArray logits;
  bool has_loss = false;
  double loss = 0;
};

struct OptimizerSpec {
  std::string kind = "adamw";  // adamw | sgd
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01, momentum = 0, dampening = 0;
  bool nesterov = false;
  // Parameters named here (exact names) get no weight decay; the TS layer computes the default set.
  std::vector<std::string> no_decay;
};

struct GenerateSpec {
  bool use_cache = true;  // keep every layer's keys/values between steps (false: recompute the whole sequence)
  int64_t max_new_tokens = 20, top_k = 0;
  double temperature = 1.0, top_p = 1.0;
  bool do_sample = false;
  int64_t eos_token_id = -1;
  uint64_t seed = 0;
};

class Model;
class Optimizer;

std::shared_ptr<Model> create_model(const ModelSpec& spec);
std::vector<ParamInfo> parameters(Model& m);
void set_trainable(Model& m, const std::vector<std::string>& names, bool trainable);
void set_training(Model& m, bool training);
// Mixed precision as torch.autocast: forwards run under libtorch's autocast with this lower-precision dtype
// ("bfloat16" or "float16"), or with none ("float32": every op in the weights' dtype).
void set_autocast(Model& m, const std::string& dtype);
void load_safetensors(Model& m, const std::string& path, const std::vector<TensorEntry>& entries);
// Writes every parameter (or those named) to path as safetensors; the caller renames it into place.
void save_safetensors(Model& m, const std::string& path, const std::vector<std::string>& names, const std::vector<std::string>& keys = {},
                      const std::string& dtype = "");

ForwardResult forward(Model& m, const Batch& b, bool want_logits);
double backward(Model& m, const Batch& b, double loss_scale);
FloatArray embed(Model& m, const Batch& b, const std::string& pooling);
std::vector<std::vector<int32_t>> generate(Model& m, const Batch& b, const GenerateSpec& g);
// The log-likelihood of each continuation after one prompt (the sum of its tokens' log-probabilities): the prompt runs
// once into a KV cache that every continuation then extends, all continuations in one batch.
std::vector<double> log_likelihood(Model& m, const std::vector<int32_t>& prompt, const std::vector<std::vector<int32_t>>& continuations);
// Decoding for a server (decode.cpp): a session per request keeps its KV cache in the core between calls, under the
// adapter it was opened with ("" for none). One step advances many sessions: those given several tokens (a prompt)
// are prefilled one by one, those given one token step together in one forward, their caches stacked and each row at
// its own position; rows under different LoRA adapters share that forward. Returns each session's next-token logits,
// [sessions, vocab].
class DecodeSession;
std::shared_ptr<DecodeSession> decode_open(Model& m, const std::string& adapter);
FloatArray decode_step(Model& m, const std::vector<std::shared_ptr<DecodeSession>>& sessions,
                       const std::vector<std::vector<int32_t>>& tokens);
// Preference, RLHF and contrastive objectives (rl/objectives.cpp): one generic entry; the objective named in the spec
// reads its own fields, so that a new objective needs no new entry point.
//   multiple-negatives-ranking: rows [anchors; positives; hard negatives...] of a feature-extraction model; numbers
//                    anchors (how many), scale (20); strings pooling. sentence-transformers' MultipleNegativesRankingLoss.
//   pairwise-reward: rows [chosen; rejected] of a one-output classifier; numbers center_rewards_coefficient;
//                    arrays margin ([pairs], optional). TRL's RewardTrainer loss.
//   dpo:             rows [chosen; rejected] of a causal LM; arrays completion_mask ([rows, seq]), ref_logps ([rows]);
//                    numbers beta, label_smoothing; strings loss_type (sigmoid | hinge | ipo | robust). TRL's DPO loss.
struct ObjectiveSpec {
  std::string name;
  std::map<std::string, double> numbers;
  std::map<std::string, std::string> strings;
  std::map<std::string, std::vector<float>> arrays;
};
// The objective's loss and statistics on one batch (the loss under "loss"). With backward, loss * loss_scale is
// backpropagated into the gradients, refused (E_NAN) when not finite; without, nothing records gradients.
std::map<std::string, double> objective_step(Model& m, const Batch& b, const ObjectiveSpec& s, double loss_scale, bool backward);
// log p(token t | tokens before t) for t = 1 .. seq-1 of every row, from logits / temperature: [batch, seq - 1].
FloatArray token_logprobs(Model& m, const Batch& b, double temperature);
//   ppo:             rows query + response of a causal LM with a value head; arrays query_lengths ([rows]), and
//                    [rows, response] arrays mask, old_logprobs, old_values, advantages, returns; numbers cliprange,
//                    cliprange_value, vf_coef, temperature. TRL PPOv2's clipped policy and value losses.
//   grpo:            rows prompt + completion; arrays completion_mask ([rows, seq]), advantages ([rows]), old_logps and
//                    ref_logps ([rows, seq - 1], optional); numbers beta, epsilon_low, epsilon_high, temperature,
//                    bias_correction_kl (1: KL times the ratio, TRL's default); strings loss_type (grpo | bnpo | dapo). TRL's GRPO loss.
// PPO's value head (TRL's v_head.summary.{weight,bias}, zero at the start) on a causal-lm model; token_logprobs and
// the head's estimates at every position but the last, [batch, seq - 1] each, from one forward (the position that
// predicts token t + 1 holds V for it).
void add_value_head(Model& m);
std::pair<FloatArray, FloatArray> token_logprobs_and_values(Model& m, const Batch& b, double temperature);
// PPO's kernels on response-aligned [rows, length] arrays: per-token KL rewards plus each row's score at its last
// token, GAE, returns, whitened advantages.
struct PpoInputs {
  int64_t rows = 0, length = 0;
  std::vector<float> logprobs, ref_logprobs, values, mask, scores;
  double kl_coef = 0.05, gamma = 1, lam = 0.95;
  bool whiten_rewards = false;
};
struct PpoAdvantages {
  std::vector<float> rewards, advantages, returns;
  double kl = 0, non_score_reward = 0;  // per-sequence sums, averaged over rows
};
PpoAdvantages ppo_advantages(const PpoInputs& in);
void zero_grad(Model& m);
double grad_norm(Model& m);
void manual_seed(uint64_t seed);
std::vector<uint8_t> rng_state();
void set_rng_state(const std::vector<uint8_t>& state);
bool cuda_available();
// Matrix-multiply throughput (GFLOP/s) of an n x n product in dtype ("float32": the better of MKL and oneDNN;
// "bfloat16") through this libtorch: the machine's ceiling for that dtype.
double bench_matmul(int64_t n, int64_t iters, const std::string& dtype);
std::string torch_info();  // {"torch", "threads", "cpuAllocator", "cpuCache": {...}, "gemm"}, as JSON

// The caching CPU allocator (alloc.cpp). Installed once, before any tensor work, unless TUNEKIT_CPU_ALLOCATOR=system;
// TUNEKIT_CPU_CACHE_MB caps the idle memory it keeps (default 2048). Returns whether it is in use.
struct CpuCacheStats {
  bool active = false;
  size_t in_use = 0, cached = 0, peak = 0, hits = 0, misses = 0;  // bytes of large blocks; allocation counts
};
bool install_cpu_cache();
CpuCacheStats cpu_cache_stats();
void empty_cpu_cache();  // returns every idle cached block to the system

// Data-parallel training on c10d (distributed/ddp.cpp): a TCPStore rendezvous at master_addr:master_port (rank 0 serves
// it), a Gloo process group, and DDP's Reducer attached to a model. Every collective that fails (a peer exited, or hung
// longer than timeout_s) is E_DIST naming this rank.
struct DistSpec {
  std::string master_addr = "127.0.0.1", backend = "gloo";
  std::string run_id;        // keys in the store are prefixed by it, so that a restarted group never reads an old run's
  bool agent_store = false;  // torchrun's agent already serves the store (TORCHELASTIC_USE_AGENT_STORE): rank 0 joins it
  int64_t master_port = 29500, rank = 0, world_size = 1;
  double timeout_s = 300;
};
struct DdpSpec {
  double bucket_mb = 25;  // DDP's bucket_cap_mb (the first bucket is 1 MiB, as DDP's)
  // DDP's find_unused_parameters: 1 or 0, or -1: on only if the first loss leaves a trainable parameter out (any rank).
  int find_unused_parameters = -1;
};
class ProcessGroup;
std::shared_ptr<ProcessGroup> init_process_group(const DistSpec& spec);
void all_reduce(ProcessGroup& g, std::vector<double>& values, const std::string& op);      // sum | max | min, in place
std::vector<uint8_t> broadcast_bytes(ProcessGroup& g, const std::vector<uint8_t>& bytes);  // rank 0's bytes to every rank
void barrier(ProcessGroup& g);
// Checks that every rank has the same parameter shapes, copies rank 0's values of every parameter to all, and hooks a
// Reducer to the parameters trainable now: each backward then leaves the average of all ranks' gradients, unless
// sync is off (DDP's no_sync: gradients accumulate locally until a backward that syncs). Replaces an earlier one.
void ddp_attach(Model& m, std::shared_ptr<ProcessGroup> g, const DdpSpec& spec);
void ddp_detach(Model& m);
void ddp_set_sync(Model& m, bool sync);

std::shared_ptr<Optimizer> create_optimizer(Model& m, const OptimizerSpec& spec);
// Clips (if max_norm > 0) and applies one update; returns the pre-clip gradient norm.
// Refuses (E_NAN) a non-finite gradient, leaving the weights untouched.
// One update from the accumulated gradients, which come from a loss multiplied by grad_scale (1: unscaled): they are
// divided by it, clipped to max_norm (0: no clipping), and applied. Returns the unscaled gradient norm. A non-finite
// norm is E_NAN, or with skip_non_finite (dynamic loss scaling) no update at all and the norm returned as it is.
double optimizer_step(Optimizer& o, double lr, double max_norm, double grad_scale, bool skip_non_finite);
void optimizer_save(Optimizer& o, const std::string& path);
void optimizer_load(Optimizer& o, const std::string& path, const std::vector<TensorEntry>& entries, int64_t step);
int64_t optimizer_steps(Optimizer& o);

// PEFT adapters (peft/): one generic spec, read by the method named in it (lora | prompt | prefix | bottleneck |
// ia3, ...), so that a new method needs no new entry point. Parameters are named as PEFT names them inside the model
// ("<module>.lora_A.<adapter>.weight"; modules_to_save copies "<module>.modules_to_save.<adapter>.<weight|bias>").
// Every spec may carry modulesToSave (base parameter names to give the adapter its own trainable copy of) and seed.
struct AdapterSpec {
  std::string method, adapter = "default";
  std::map<std::string, double> numbers;
  std::map<std::string, bool> flags;
  std::map<std::string, std::string> strings;
  std::map<std::string, std::vector<std::string>> lists;
  std::map<std::string, std::vector<int64_t>> integer_lists;
};
// Adds the adapter (not active yet) and returns the names of the parameters it created.
std::vector<std::string> add_adapter(Model& m, const AdapterSpec& spec);
void set_adapter(Model& m, const std::string& name);  // "" runs the bare base model
void merge_adapter(Model& m);
void unmerge_adapter(Model& m);
void delete_adapter(Model& m, const std::string& name);

// L2-regularised logistic regression fitted with L-BFGS (strong Wolfe line search) in float64, minimising the same
// objective as scikit-learn's LogisticRegression(solver='lbfgs'): C * sum(log loss) + ||W||^2 / 2, the intercept
// unpenalised. Two classes use one weight vector (binomial), more use one per class (multinomial).
struct LogRegSpec {
  double C = 1.0;
  int64_t max_iter = 1000;
  double tol = 1e-6;  // stop when the largest gradient entry of the (1/n-scaled) objective falls below this
};
struct LogRegResult {
  std::vector<double> weights;  // [rows, dim] row-major; rows = 1 for two classes, else classes
  std::vector<double> bias;     // [rows]
  int64_t rows = 0, iterations = 0;
  double loss = 0;  // mean log loss on the training data at the solution
  bool converged = false;
};
LogRegResult logreg_fit(const std::vector<float>& x, int64_t n, int64_t dim, const std::vector<int32_t>& y, int64_t classes,
                        const LogRegSpec& spec);

}  // namespace tunekit
