// Soft prompt tuning (Lester et al. 2021) as PEFT's PROMPT_TUNING: num_virtual_tokens trainable embeddings are
// prepended to every input's token embeddings (Model::token_embeddings), with attention on them and, for language
// models, -100 labels at their positions.
#include "../model.h"

namespace tunekit {

void add_prompt(Model& m, const PromptSpec& s) {
  check_new_adapter(m, s.adapter);
  if (s.num_virtual_tokens < 1) throw Error("E_ARG", "numVirtualTokens must be a positive integer");
  const auto& table = m.params.at(m.word_embeddings_name());
  torch::Tensor prompt;
  if (!s.init_ids.empty()) {
    // TEXT initialisation: the embeddings of the init text's tokens, repeated or cut to length by the caller.
    if (int64_t(s.init_ids.size()) != s.num_virtual_tokens) throw Error("E_ARG", "prompt init ids must number numVirtualTokens");
    for (auto id : s.init_ids)
      if (id < 0 || id >= table.size(0)) throw Error("E_RANGE", "prompt init token id " + std::to_string(id) + " is outside the vocabulary");
    auto ids = torch::tensor(std::vector<int64_t>(s.init_ids.begin(), s.init_ids.end()), torch::kLong).to(table.device());
    prompt = table.detach().index_select(0, ids).to(torch::kFloat32).clone();
  } else {
    // RANDOM: nn.Embedding's own initialisation, N(0, 1).
    auto gen = at::make_generator<at::CPUGeneratorImpl>(s.seed);
    prompt = torch::empty({s.num_virtual_tokens, table.size(1)}, torch::kFloat32).normal_(0, 1, gen);
  }
  Adapter a;
  a.method = "prompt";
  a.prompt = "prompt_encoder." + s.adapter + ".embedding.weight";
  a.virtual_tokens = s.num_virtual_tokens;
  std::vector<std::pair<std::string, torch::Tensor>> created{{a.prompt, prompt}};
  add_saved_copies(m, s.adapter, s.modules_to_save, a, created);
  for (auto& [name, t] : created) m.add(name, t);
  m.adapters[s.adapter] = std::move(a);
}

}  // namespace tunekit
