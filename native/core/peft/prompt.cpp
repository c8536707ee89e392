// Soft prompt tuning (Lester et al. 2021) as PEFT's PROMPT_TUNING: num_virtual_tokens trainable embeddings are
// prepended to every input's token embeddings, with attention on them and, for language models, -100 labels at
// their positions.
#include "method.h"

namespace tunekit {
namespace {

struct Prompt : AdapterMethod {
  std::string prompt;  // the [virtual_tokens, hidden] embedding parameter
  int64_t tokens = 0;

  torch::Tensor input_embeddings(const ForwardContext& c, const torch::Tensor& x) const override {
    const auto& p = c.m.stored(prompt);
    return torch::cat({p.unsqueeze(0).expand({x.size(0), -1, -1}).to(x.scalar_type()), x}, 1);
  }
  int64_t virtual_tokens() const override { return tokens; }
};

std::unique_ptr<AdapterMethod> create(const Model& m, SpecReader& s, Created& created) {
  auto a = std::make_unique<Prompt>();
  a->tokens = s.integer("numVirtualTokens", 8);
  require(a->tokens >= 1, "E_ARG", "numVirtualTokens must be a positive integer");
  const auto& table = m.stored(m.word_embeddings());
  auto init = s.integers("initIds");
  torch::Tensor prompt;
  if (!init.empty()) {
    // TEXT initialisation: the embeddings of the init text's tokens, repeated or cut to length by the caller.
    require(int64_t(init.size()) == a->tokens, "E_ARG", "prompt init ids must number numVirtualTokens");
    for (auto id : init)
      require(id >= 0 && id < table.size(0), "E_RANGE", "prompt init token id " + std::to_string(id) + " is outside the vocabulary");
    auto ids = torch::tensor(init, torch::kLong).to(table.device());
    prompt = table.detach().index_select(0, ids).to(torch::kFloat32).clone();
  } else {
    // RANDOM: nn.Embedding's own initialisation, N(0, 1).
    auto gen = at::make_generator<at::CPUGeneratorImpl>(uint64_t(s.integer("seed", 0)));
    prompt = torch::empty({a->tokens, table.size(1)}, torch::kFloat32).normal_(0, 1, gen);
  }
  a->prompt = "prompt_encoder." + s.adapter() + ".embedding.weight";
  created.emplace_back(a->prompt, prompt);
  return a;
}

const bool kRegistered = register_method("prompt", create);

}  // namespace
}  // namespace tunekit
