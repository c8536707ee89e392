// Bindings of data-parallel training: a process group, its collectives on small host values, and DDP on a model.
#include "convert.h"

namespace tunekit::addon {
namespace {

Napi::Value InitProcessGroup(const Napi::CallbackInfo& info) {
  auto o = object_arg(info, 0, "spec");
  DistSpec s;
  s.master_addr = str_field(o, "masterAddr", s.master_addr);
  s.master_port = int64_t(num_field(o, "masterPort", double(s.master_port)));
  s.rank = int64_t(num_field(o, "rank", 0));
  s.world_size = int64_t(num_field(o, "worldSize", 1));
  s.timeout_s = num_field(o, "timeoutSeconds", s.timeout_s);
  s.backend = str_field(o, "backend", s.backend);
  s.run_id = str_field(o, "runId", "");
  s.agent_store = bool_field(o, "agentStore", false);
  return run<std::shared_ptr<ProcessGroup>>(
      info.Env(), [s] { return init_process_group(s); }, [](Napi::Env env, std::shared_ptr<ProcessGroup>& g) { return wrap(env, g); });
}

Napi::Value AllReduce(const Napi::CallbackInfo& info) {
  auto g = unwrap<ProcessGroup>(info, 0, "process group");
  auto values = typed<Napi::Float64Array, double>(info.Env(), info[1], napi_float64_array, "values");
  auto op = string_arg(info, 2, "op");
  return run<std::vector<double>>(
      info.Env(),
      [g, values = std::move(values), op]() mutable {
        all_reduce(*g, values, op);
        return values;
      },
      [](Napi::Env env, std::vector<double>& v) {
        auto out = Napi::Float64Array::New(env, v.size());
        std::copy(v.begin(), v.end(), out.Data());
        return Napi::Value(out);
      });
}

Napi::Value BroadcastBytes(const Napi::CallbackInfo& info) {
  auto g = unwrap<ProcessGroup>(info, 0, "process group");
  auto bytes = typed<Napi::Uint8Array, uint8_t>(info.Env(), info[1], napi_uint8_array, "bytes");
  return run<std::vector<uint8_t>>(
      info.Env(), [g, bytes = std::move(bytes)] { return broadcast_bytes(*g, bytes); },
      [](Napi::Env env, std::vector<uint8_t>& v) {
        auto out = Napi::Uint8Array::New(env, v.size());
        std::copy(v.begin(), v.end(), out.Data());
        return Napi::Value(out);
      });
}

Napi::Value Barrier(const Napi::CallbackInfo& info) {
  auto g = unwrap<ProcessGroup>(info, 0, "process group");
  return run_void(info.Env(), [g] { barrier(*g); });
}

Napi::Value DdpAttach(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto g = unwrap<ProcessGroup>(info, 1, "process group");
  auto o = object_arg(info, 2, "spec");
  DdpSpec s;
  s.bucket_mb = num_field(o, "bucketMb", s.bucket_mb);
  auto unused = o.Get("findUnusedParameters");
  if (unused.IsBoolean()) s.find_unused_parameters = unused.As<Napi::Boolean>().Value() ? 1 : 0;
  return run_void(info.Env(), [m, g, s] { ddp_attach(*m, g, s); });
}

Napi::Value DdpDetach(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  return run_void(info.Env(), [m] { ddp_detach(*m); });
}

Napi::Value DdpSetSync(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  bool sync = bool_arg(info, 1, "sync");
  return run_void(info.Env(), [m, sync] { ddp_set_sync(*m, sync); });
}

}  // namespace

void init_dist(Napi::Env env, Napi::Object exports) {
  exports.Set("initProcessGroup", Napi::Function::New(env, InitProcessGroup));
  exports.Set("allReduce", Napi::Function::New(env, AllReduce));
  exports.Set("broadcastBytes", Napi::Function::New(env, BroadcastBytes));
  exports.Set("barrier", Napi::Function::New(env, Barrier));
  exports.Set("ddpAttach", Napi::Function::New(env, DdpAttach));
  exports.Set("ddpDetach", Napi::Function::New(env, DdpDetach));
  exports.Set("ddpSetSync", Napi::Function::New(env, DdpSetSync));
}

}  // namespace tunekit::addon
