// Bindings of PEFT adapters: one generic add for every method, switching, merging, deleting.
#include "convert.h"

namespace tunekit::addon {
namespace {

// A JS object of plain options as the core's generic AdapterSpec: numbers, booleans, strings, and arrays of strings
// or of integers. The method reads what it knows and refuses the rest.
AdapterSpec adapter_spec_arg(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  AdapterSpec s;
  s.method = string_arg(info, 1, "method");
  auto o = object_arg(info, 2, "spec");
  auto keys = o.GetPropertyNames();
  for (uint32_t k = 0; k < keys.Length(); k++) {
    auto key = keys.Get(k).As<Napi::String>().Utf8Value();
    auto v = o.Get(key);
    if (key == "adapter")
      s.adapter = str_field(o, "adapter", "");
    else if (v.IsUndefined())
      continue;
    else if (v.IsNumber())
      s.numbers[key] = v.As<Napi::Number>().DoubleValue();
    else if (v.IsBoolean())
      s.flags[key] = v.As<Napi::Boolean>().Value();
    else if (v.IsString())
      s.strings[key] = v.As<Napi::String>().Utf8Value();
    else if (v.IsArray() && v.As<Napi::Array>().Length() > 0 && v.As<Napi::Array>().Get(uint32_t(0)).IsNumber())
      s.integer_lists[key] = ints(env, v, key.c_str());
    else if (v.IsArray())
      s.lists[key] = strings(env, v, key.c_str());
    else
      type_error(env, "adapter option " + key + " must be a number, boolean, string or array");
  }
  return s;
}

Napi::Value AddAdapter(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto s = adapter_spec_arg(info);
  using Names = std::vector<std::string>;
  return run<Names>(
      info.Env(), [m, s] { return add_adapter(*m, s); },
      [](Napi::Env env, Names& names) {
        auto a = Napi::Array::New(env, names.size());
        for (size_t i = 0; i < names.size(); i++) a.Set(uint32_t(i), Napi::String::New(env, names[i]));
        return Napi::Value(a);
      });
}

Napi::Value SetAdapter(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto name = string_arg(info, 1, "adapter name");
  return run_void(info.Env(), [m, name] { set_adapter(*m, name); });
}

Napi::Value MergeAdapter(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  bool merge = bool_arg(info, 1, "merge");
  return run_void(info.Env(), [m, merge] { merge ? merge_adapter(*m) : unmerge_adapter(*m); });
}

Napi::Value DeleteAdapter(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto name = string_arg(info, 1, "adapter name");
  return run_void(info.Env(), [m, name] { delete_adapter(*m, name); });
}

}  // namespace

void init_peft(Napi::Env env, Napi::Object exports) {
  exports.Set("addAdapter", Napi::Function::New(env, AddAdapter));
  exports.Set("setAdapter", Napi::Function::New(env, SetAdapter));
  exports.Set("mergeAdapter", Napi::Function::New(env, MergeAdapter));
  exports.Set("deleteAdapter", Napi::Function::New(env, DeleteAdapter));
}

}  // namespace tunekit::addon
