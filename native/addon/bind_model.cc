// Bindings of a model: creation from a spec, parameters, weights on disk, forward, backward, embeddings, generation.
#include <cmath>
#include <set>
#include <variant>

#include "../core/safetensors_header.h"
#include "convert.h"

namespace tunekit::addon {
namespace {

// ModelSpec's fields by their JS names: the one table the addon reads a spec through. Every field is required and no
// other is accepted, so the TS layer (lib/families.ts) is the only place defaults live.
using SpecField =
    std::variant<std::string ModelSpec::*, int64_t ModelSpec::*, uint64_t ModelSpec::*, double ModelSpec::*, bool ModelSpec::*>;
const std::pair<const char*, SpecField> kSpecFields[] = {
    {"family", &ModelSpec::family},
    {"task", &ModelSpec::task},
    {"device", &ModelSpec::device},
    {"dtype", &ModelSpec::dtype},
    {"vocabSize", &ModelSpec::vocab_size},
    {"hiddenSize", &ModelSpec::hidden_size},
    {"numLayers", &ModelSpec::num_layers},
    {"numHeads", &ModelSpec::num_heads},
    {"numKvHeads", &ModelSpec::num_kv_heads},
    {"headDim", &ModelSpec::head_dim},
    {"intermediateSize", &ModelSpec::intermediate_size},
    {"maxPositions", &ModelSpec::max_positions},
    {"typeVocabSize", &ModelSpec::type_vocab_size},
    {"numLabels", &ModelSpec::num_labels},
    {"padTokenId", &ModelSpec::pad_token_id},
    {"normEps", &ModelSpec::norm_eps},
    {"ropeTheta", &ModelSpec::rope_theta},
    {"embdDropout", &ModelSpec::embd_dropout},
    {"attnDropout", &ModelSpec::attn_dropout},
    {"residDropout", &ModelSpec::resid_dropout},
    {"classifierDropout", &ModelSpec::classifier_dropout},
    {"activation", &ModelSpec::activation},
    {"tieWordEmbeddings", &ModelSpec::tie_word_embeddings},
    {"attentionBias", &ModelSpec::attention_bias},
    {"attentionOutBias", &ModelSpec::attention_out_bias},
    {"mlpBias", &ModelSpec::mlp_bias},
    {"scaleAttnByInverseLayerIdx", &ModelSpec::scale_attn_by_inverse_layer_idx},
    {"initSeed", &ModelSpec::init_seed},
};

ModelSpec spec_arg(const Napi::CallbackInfo& info, size_t i) {
  auto env = info.Env();
  auto o = object_arg(info, i, "spec");
  ModelSpec s;
  std::set<std::string> known;
  for (const auto& [key, field] : kSpecFields) {
    known.insert(key);
    auto v = o.Get(key);
    if (v.IsUndefined()) type_error(env, std::string("spec.") + key + " is missing");
    std::visit(
        [&](auto member) {
          using T = std::remove_reference_t<decltype(s.*member)>;
          if constexpr (std::is_same_v<T, std::string>) {
            if (!v.IsString()) type_error(env, std::string("spec.") + key + " must be a string");
            s.*member = v.As<Napi::String>().Utf8Value();
          } else if constexpr (std::is_same_v<T, bool>) {
            if (!v.IsBoolean()) type_error(env, std::string("spec.") + key + " must be a boolean");
            s.*member = v.As<Napi::Boolean>().Value();
          } else {
            if (!v.IsNumber()) type_error(env, std::string("spec.") + key + " must be a number");
            double d = v.As<Napi::Number>().DoubleValue();
            if constexpr (std::is_integral_v<T>) {
              if (d != std::floor(d) || std::abs(d) > 9e15) type_error(env, std::string("spec.") + key + " must be an integer");
            }
            s.*member = T(d);
          }
        },
        field);
  }
  auto keys = o.GetPropertyNames();
  for (uint32_t k = 0; k < keys.Length(); k++) {
    auto key = keys.Get(k).As<Napi::String>().Utf8Value();
    if (!known.count(key)) type_error(env, "spec." + key + " is not a model spec field");
  }
  return s;
}

Napi::Value CreateModel(const Napi::CallbackInfo& info) {
  auto s = spec_arg(info, 0);
  return run<std::shared_ptr<Model>>(
      info.Env(), [s] { return create_model(s); }, [](Napi::Env env, std::shared_ptr<Model>& m) { return wrap(env, m); });
}

Napi::Value Parameters(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  return run<std::vector<ParamInfo>>(
      info.Env(), [m] { return parameters(*m); },
      [](Napi::Env env, std::vector<ParamInfo>& ps) {
        auto a = Napi::Array::New(env, ps.size());
        for (size_t i = 0; i < ps.size(); i++) {
          auto o = Napi::Object::New(env);
          o.Set("name", ps[i].name);
          o.Set("dtype", ps[i].dtype);
          auto shape = Napi::Array::New(env, ps[i].shape.size());
          for (size_t j = 0; j < ps[i].shape.size(); j++) shape.Set(uint32_t(j), Napi::Number::New(env, double(ps[i].shape[j])));
          o.Set("shape", shape);
          o.Set("numel", Napi::Number::New(env, double(ps[i].numel)));
          o.Set("trainable", Napi::Boolean::New(env, ps[i].trainable));
          o.Set("hasGrad", Napi::Boolean::New(env, ps[i].has_grad));
          a.Set(uint32_t(i), o);
        }
        return Napi::Value(a);
      });
}

Napi::Value SetTrainable(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto names = strings(info.Env(), info[1], "names");
  bool on = bool_arg(info, 2, "trainable");
  return run_void(info.Env(), [m, names, on] { set_trainable(*m, names, on); });
}

Napi::Value SetTraining(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  bool on = bool_arg(info, 1, "training");
  return run_void(info.Env(), [m, on] { set_training(*m, on); });
}

Napi::Value SetAutocast(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto dtype = string_arg(info, 1, "dtype");
  return run_void(info.Env(), [m, dtype] { set_autocast(*m, dtype); });
}

Napi::Value LoadSafetensors(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto path = string_arg(info, 1, "path");
  auto entries = entries_arg(info.Env(), info[2]);
  return run_void(info.Env(), [m, path, entries] { load_safetensors(*m, path, entries); });
}

Napi::Value SaveSafetensors(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto path = string_arg(info, 1, "path");
  auto names = strings(info.Env(), info[2], "names");
  std::vector<std::string> keys;
  if (info.Length() > 3 && !info[3].IsUndefined()) keys = strings(info.Env(), info[3], "keys");
  std::string dtype = info.Length() > 4 && !info[4].IsUndefined() ? string_arg(info, 4, "dtype") : "";
  return run_void(info.Env(), [m, path, names, keys, dtype] { save_safetensors(*m, path, names, keys, dtype); });
}

Napi::Value Forward(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  bool want = bool_arg(info, 2, "wantLogits");
  return run<ForwardResult>(
      info.Env(), [m, b, want] { return forward(*m, b, want); },
      [want](Napi::Env env, ForwardResult& r) {
        auto o = Napi::Object::New(env);
        if (want) o.Set("logits", float_array(env, r.logits));
        if (r.has_loss) o.Set("loss", Napi::Number::New(env, r.loss));
        return Napi::Value(o);
      });
}

Napi::Value Backward(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  double scale = number_arg(info, 2, "lossScale");
  return run<double>(
      info.Env(), [m, b, scale] { return backward(*m, b, scale); },
      [](Napi::Env env, double& loss) { return Napi::Number::New(env, loss); });
}

Napi::Value Embed(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  auto pooling = string_arg(info, 2, "pooling");
  return run<FloatArray>(
      info.Env(), [m, b, pooling] { return embed(*m, b, pooling); }, float_array);
}

Napi::Value Generate(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  auto o = object_arg(info, 2, "options");
  GenerateSpec g;
  g.max_new_tokens = int64_t(num_field(o, "maxNewTokens", 20));
  g.temperature = num_field(o, "temperature", 1.0);
  g.top_k = int64_t(num_field(o, "topK", 0));
  g.top_p = num_field(o, "topP", 1.0);
  g.do_sample = bool_field(o, "doSample", false);
  g.eos_token_id = int64_t(num_field(o, "eosTokenId", -1));
  g.use_cache = bool_field(o, "useCache", true);
  g.seed = uint64_t(num_field(o, "seed", 0));
  using Rows = std::vector<std::vector<int32_t>>;
  return run<Rows>(
      info.Env(), [m, b, g] { return generate(*m, b, g); },
      [](Napi::Env env, Rows& rows) {
        auto a = Napi::Array::New(env, rows.size());
        for (size_t i = 0; i < rows.size(); i++) {
          auto r = Napi::Array::New(env, rows[i].size());
          for (size_t j = 0; j < rows[i].size(); j++) r.Set(uint32_t(j), Napi::Number::New(env, rows[i][j]));
          a.Set(uint32_t(i), r);
        }
        return Napi::Value(a);
      });
}

// Rows that arrive as one flat Int32Array and a length per row (continuations, a step's tokens per session).
std::vector<std::vector<int32_t>> flat_rows(Napi::Env env, const Napi::Value& flat_value, const Napi::Value& lengths_value,
                                            const char* what) {
  auto flat = typed<Napi::Int32Array, int32_t>(env, flat_value, napi_int32_array, what);
  auto lengths = ints(env, lengths_value, "lengths");
  std::vector<std::vector<int32_t>> rows;
  size_t at = 0;
  for (auto n : lengths) {
    if (n < 0 || at + size_t(n) > flat.size()) throw make_error(env, "E_SHAPE", std::string(what) + ": lengths do not match the tokens");
    rows.emplace_back(flat.begin() + at, flat.begin() + at + n);
    at += size_t(n);
  }
  if (at != flat.size()) throw make_error(env, "E_SHAPE", std::string(what) + ": lengths do not match the tokens");
  return rows;
}

// Continuations arrive as one flat Int32Array and their lengths.
Napi::Value LogLikelihood(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto m = unwrap<Model>(info, 0, "model");
  auto prompt = typed<Napi::Int32Array, int32_t>(env, info[1], napi_int32_array, "prompt");
  auto continuations = flat_rows(env, info[2], info[3], "continuations");
  return run<std::vector<double>>(
      env, [m, prompt, continuations] { return log_likelihood(*m, prompt, continuations); },
      [](Napi::Env env, std::vector<double>& scores) {
        auto a = Napi::Array::New(env, scores.size());
        for (size_t i = 0; i < scores.size(); i++) a.Set(uint32_t(i), Napi::Number::New(env, scores[i]));
        return Napi::Value(a);
      });
}

Napi::Value DecodeOpen(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto adapter = string_arg(info, 1, "adapter");
  return run<std::shared_ptr<DecodeSession>>(
      info.Env(), [m, adapter] { return decode_open(*m, adapter); },
      [](Napi::Env env, std::shared_ptr<DecodeSession>& s) { return wrap(env, s); });
}

// Sessions as an array of handles; their new tokens as one flat Int32Array and a length per session.
Napi::Value DecodeStep(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto m = unwrap<Model>(info, 0, "model");
  if (info.Length() < 2 || !info[1].IsArray()) type_error(env, "sessions must be an array of decode session handles");
  auto list = info[1].As<Napi::Array>();
  std::vector<std::shared_ptr<DecodeSession>> sessions;
  for (uint32_t i = 0; i < list.Length(); i++) {
    auto v = list.Get(i);
    if (!v.IsExternal()) type_error(env, "sessions must be an array of decode session handles");
    auto* h = v.As<Napi::External<Holder>>().Data();
    if (std::string(h->kind) != kind_of<DecodeSession>()) type_error(env, "sessions must be an array of decode session handles");
    if (!h->ptr) throw make_error(env, "E_DISPOSED", "a decode session was disposed");
    sessions.push_back(std::static_pointer_cast<DecodeSession>(h->ptr));
  }
  auto tokens = flat_rows(env, info[2], info[3], "tokens");
  return run<FloatArray>(
      env, [m, sessions, tokens] { return decode_step(*m, sessions, tokens); }, float_array);
}

Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  return run_void(info.Env(), [m] { zero_grad(*m); });
}

Napi::Value GradNorm(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  return run<double>(
      info.Env(), [m] { return grad_norm(*m); }, [](Napi::Env env, double& n) { return Napi::Number::New(env, n); });
}

// Synchronous like a file stat: it reads only the header, and callers need it before they can queue any job.
Napi::Value ReadSafetensorsHeader(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto path = string_arg(info, 0, "path");
  SafetensorsHeader h;
  try {
    h = read_safetensors_header(path);
  } catch (const Error& e) {
    throw make_error(env, e.code, e.what());
  }
  auto tensors = Napi::Array::New(env, h.tensors.size());
  for (size_t i = 0; i < h.tensors.size(); i++) {
    const auto& t = h.tensors[i];
    auto o = Napi::Object::New(env);
    o.Set("name", t.name);
    o.Set("dtype", t.dtype);
    auto shape = Napi::Array::New(env, t.shape.size());
    for (size_t j = 0; j < t.shape.size(); j++) shape.Set(uint32_t(j), Napi::Number::New(env, double(t.shape[j])));
    o.Set("shape", shape);
    o.Set("begin", Napi::Number::New(env, double(t.begin)));
    o.Set("end", Napi::Number::New(env, double(t.end)));
    tensors.Set(uint32_t(i), o);
  }
  auto metadata = Napi::Object::New(env);
  for (const auto& [k, v] : h.metadata) metadata.Set(k, v);
  auto out = Napi::Object::New(env);
  out.Set("tensors", tensors);
  out.Set("metadata", metadata);
  return out;
}

Napi::Value Dispose(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) type_error(info.Env(), "handle must be a tunekit handle");
  // A job still running keeps its own shared_ptr, so the tensors outlive it.
  info[0].As<Napi::External<Holder>>().Data()->ptr.reset();
  return info.Env().Undefined();
}

}  // namespace

void init_model(Napi::Env env, Napi::Object exports) {
  exports.Set("createModel", Napi::Function::New(env, CreateModel));
  exports.Set("parameters", Napi::Function::New(env, Parameters));
  exports.Set("setTrainable", Napi::Function::New(env, SetTrainable));
  exports.Set("setTraining", Napi::Function::New(env, SetTraining));
  exports.Set("setAutocast", Napi::Function::New(env, SetAutocast));
  exports.Set("loadSafetensors", Napi::Function::New(env, LoadSafetensors));
  exports.Set("readSafetensorsHeader", Napi::Function::New(env, ReadSafetensorsHeader));
  exports.Set("saveSafetensors", Napi::Function::New(env, SaveSafetensors));
  exports.Set("forward", Napi::Function::New(env, Forward));
  exports.Set("backward", Napi::Function::New(env, Backward));
  exports.Set("embed", Napi::Function::New(env, Embed));
  exports.Set("generate", Napi::Function::New(env, Generate));
  exports.Set("logLikelihood", Napi::Function::New(env, LogLikelihood));
  exports.Set("decodeOpen", Napi::Function::New(env, DecodeOpen));
  exports.Set("decodeStep", Napi::Function::New(env, DecodeStep));
  exports.Set("zeroGrad", Napi::Function::New(env, ZeroGrad));
  exports.Set("gradNorm", Napi::Function::New(env, GradNorm));
  exports.Set("dispose", Napi::Function::New(env, Dispose));
}

}  // namespace tunekit::addon
