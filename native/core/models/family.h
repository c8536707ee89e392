// A model family, described once: how to build its parameters, how to run them, and the few facts about its names
// that generic code needs. Each models/<family>.cpp registers one descriptor at load time; nothing else in the core
// compares a family name.
#pragma once
#include "../model.h"

namespace tunekit {

struct Family {
  std::string name;  // config.json's model_type
  // Prefix of the backbone's parameter names under a task head ("transformer." for GPT2LMHeadModel); a
  // feature-extraction model (the bare backbone class) has none.
  std::string backbone;
  std::string word_embeddings;  // the input token table, relative to the backbone ("wte.weight")
  // Modules that are embedding tables, relative to the backbone: LoRA and IA3 adapt linear layers only.
  std::vector<std::string> embeddings;
  // How positions are encoded: rotary (no table, no length limit), a learned table, or a learned table whose
  // positions continue after a prefix (GPT-2 counts prefix keys as past positions, as transformers' cache does).
  enum class Positions { rotary, table, table_after_prefix } positions = Positions::table;
  // Whether the word embedding table is nn.Embedding(..., padding_idx=pad_token_id): the pad token's row then gets
  // no gradient from the input side.
  bool pad_row_frozen = false;
  void (*build)(Model& m) = nullptr;  // adds every parameter for m.spec's task (normal(0, 0.02), unit norms)
  // A masked-LM head runs on c.lm_head_input(hidden), so that a loss-only call scores the target rows alone.
  Output (*forward)(ForwardContext& c, const torch::Tensor& ids, const torch::Tensor& mask) = nullptr;
  // Whether a module keeps its weight as [in, out] (GPT-2's Conv1D); absent: every projection is nn.Linear.
  bool (*conv1d)(const std::string& module) = nullptr;
};

// Registers a family (from a static initialiser in its file) and returns the stored descriptor.
const Family& register_family(Family f);
// The family of a model_type, or E_CONFIG naming the supported ones.
const Family& find_family(const std::string& name);

// Fresh parameters as every family's build creates them (transformers' pretraining init): normal(0, 0.02) matrices and
// embedding tables, zero biases, unit norm weights, drawn from torch's global generator, which create_model seeds.
torch::Tensor init_normal(std::vector<int64_t> shape);
void add_linear(Model& m, const std::string& name, int64_t in, int64_t out, bool bias = true);  // nn.Linear, [out, in]
void add_layer_norm(Model& m, const std::string& name, int64_t width);

// The Llama-style decoder (RMSNorm, rotary, SwiGLU, grouped-query attention; decoder.cpp) under a family's own
// model_type: a family that differs from Llama only in its config registers this descriptor.
Family decoder_family(std::string name);

}  // namespace tunekit
