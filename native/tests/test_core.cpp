// The core without Node: build a tiny model of each family, check training reduces the loss, that a bad token id is
// refused with E_RANGE, and that the device works. Run by ctest (CPU, and CUDA where the libtorch has it).
#include <cmath>
#include <cstdio>
#include <string>

#include "../core/api.h"

using namespace tunekit;

static int failures = 0;
#define CHECK(cond, msg)                                   \
  do {                                                     \
    if (!(cond)) {                                         \
      std::fprintf(stderr, "FAIL %s: %s\n", __func__, msg); \
      failures++;                                          \
    }                                                      \
  } while (0)

static ModelSpec tiny(const std::string& family, const std::string& task, const std::string& device) {
  ModelSpec s;
  s.family = family;
  s.task = task;
  s.device = device;
  s.vocab_size = 64;
  s.hidden_size = 32;
  s.num_layers = 2;
  s.num_heads = 4;
  s.num_kv_heads = family == "llama" ? 2 : 4;
  s.head_dim = 8;
  s.intermediate_size = 64;
  s.max_positions = 32;
  s.activation = family == "llama" ? "silu" : family == "gpt2" ? "gelu_new" : "gelu";
  s.tie_word_embeddings = family != "llama";
  s.pad_token_id = 0;
  return s;
}

static Batch batch(bool classification) {
  Batch b;
  b.batch = 2;
  b.seq = 6;
  b.input_ids = {5, 9, 12, 3, 7, 1, 8, 8, 2, 4, 0, 0};
  b.attention_mask = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  if (classification) {
    b.labels = {0, 1};
    b.labels_shape = {2};
  } else {
    b.labels = {5, 9, 12, 3, 7, 1, 8, 8, 2, 4, -100, -100};
    b.labels_shape = {2, 6};
  }
  return b;
}

static void trains(const std::string& family, const std::string& task, const std::string& device) {
  auto m = create_model(tiny(family, task, device));
  set_training(*m, true);
  OptimizerSpec os;
  auto opt = create_optimizer(*m, os);
  auto b = batch(task == "sequence-classification");
  double first = 0, last = 0;
  for (int i = 0; i < 20; i++) {
    double loss = backward(*m, b, 1.0);
    optimizer_step(*opt, 1e-2, 1.0);
    zero_grad(*m);
    if (i == 0) first = loss;
    last = loss;
  }
  std::printf("%s %s on %s: loss %.4f -> %.4f\n", family.c_str(), task.c_str(), device.c_str(), first, last);
  CHECK(std::isfinite(last) && last < first * 0.7, (family + " " + task + " did not learn").c_str());
}

static void refuses_bad_ids(const std::string& device) {
  auto m = create_model(tiny("gpt2", "causal-lm", device));
  auto b = batch(false);
  b.input_ids[3] = 64;
  try {
    forward(*m, b, true);
    CHECK(false, "out-of-range id accepted");
  } catch (const Error& e) {
    CHECK(e.code == "E_RANGE", "wrong error code");
  }
}

int main(int argc, char** argv) {
  std::string device = argc > 1 ? argv[1] : "cpu";
  if (device == "cuda" && !cuda_available()) {
    std::fprintf(stderr, "FAIL: CUDA requested but not available\n");
    return 1;
  }
  trains("gpt2", "causal-lm", device);
  trains("llama", "causal-lm", device);
  trains("gpt2", "sequence-classification", device);
  trains("distilbert", "sequence-classification", device);
  refuses_bad_ids(device);
  std::printf("%s\n", failures ? "FAILED" : "all core tests passed");
  return failures ? 1 : 0;
}
