// Data parallelism on PyTorch's c10d, as torch.nn.parallel.DistributedDataParallel does it: a TCPStore for the
// rendezvous, ProcessGroupGloo for the collectives on CPU, and DDP's own c10d::Reducer, whose autograd hooks average
// gradients bucket by bucket while backward is still running.
#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#include <unordered_set>

#include "../model.h"

namespace tunekit {

class ProcessGroup {
 public:
  DistSpec spec;
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;

  std::string who() const { return "rank " + std::to_string(spec.rank) + " of " + std::to_string(spec.world_size); }

  // A collective that failed (a peer died, hung past the timeout, or disagreed), as an error naming this rank.
  [[noreturn]] void failed(const std::string& what, const std::exception& e) const {
    std::string msg = e.what();
    if (auto nl = msg.find("\nException raised from"); nl != std::string::npos) msg.resize(nl);
    throw Error("E_DIST", who() + ": " + what + " failed: " + msg + " [collectives wait " + std::to_string(int64_t(spec.timeout_s)) +
                              " s for a peer; when one exited or hung, its own error is the cause]");
  }

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) const {
    try {
      work->wait();
    } catch (const std::exception& e) {
      failed(what, e);
    }
  }
};

namespace {

std::chrono::milliseconds millis(double seconds) { return std::chrono::milliseconds(int64_t(seconds * 1000)); }

std::shared_ptr<gloo::transport::Device> gloo_device(const DistSpec& s) {
  // torch.distributed's choice: GLOO_SOCKET_IFNAME names the interface; else the loopback address when the master is
  // on it (one machine), else the address the host name resolves to.
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  if (s.master_addr == "127.0.0.1" || s.master_addr == "localhost") return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

std::shared_ptr<ProcessGroup> init_process_group(const DistSpec& s) {
  require(s.world_size >= 1 && s.rank >= 0 && s.rank < s.world_size, "E_ARG",
          "rank " + std::to_string(s.rank) + " is outside a world of " + std::to_string(s.world_size));
  require(s.master_port > 0 && s.master_port < 65536, "E_ARG", "master port " + std::to_string(s.master_port) + " is not a TCP port");
  require(s.timeout_s > 0, "E_ARG", "the timeout must be > 0 seconds");
  require(s.backend == "gloo", "E_DEVICE",
          "backend '" + s.backend + "': this build has gloo (CPU) only; NCCL needs a CUDA libtorch built with it");
  auto g = std::make_shared<ProcessGroup>();
  g->spec = s;
  try {
    c10d::TCPStoreOptions o;
    o.port = uint16_t(s.master_port);
    o.isServer = s.rank == 0 && !s.agent_store;
    o.numWorkers = size_t(s.world_size);
    o.waitWorkers = true;  // every rank connected, or a timeout: a missing peer is found here, not in the first step
    o.timeout = millis(s.timeout_s);
    g->store = c10::make_intrusive<c10d::TCPStore>(s.master_addr, o);
    auto opts = c10d::ProcessGroupGloo::Options::create(millis(s.timeout_s));
    opts->devices.push_back(gloo_device(s));
    auto store = c10::make_intrusive<c10d::PrefixStore>("tunekit/" + s.run_id, g->store);
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, int(s.rank), int(s.world_size), opts);
    g->pg = c10::make_intrusive<c10d::ProcessGroup>(store, int(s.rank), int(s.world_size));
    g->pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    g->pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    g->failed("the rendezvous at " + s.master_addr + ":" + std::to_string(s.master_port), e);
  }
  return g;
}

void all_reduce(ProcessGroup& g, std::vector<double>& values, const std::string& op) {
  c10d::AllreduceOptions o;
  if (op == "sum")
    o.reduceOp = c10d::ReduceOp::SUM;
  else if (op == "max")
    o.reduceOp = c10d::ReduceOp::MAX;
  else if (op == "min")
    o.reduceOp = c10d::ReduceOp::MIN;
  else
    throw Error("E_ARG", "reduce op must be 'sum', 'max' or 'min', not '" + op + "'");
  std::vector<at::Tensor> t = {torch::tensor(values, torch::kFloat64)};
  g.wait(g.pg->allreduce(t, o), "allreduce");
  auto r = t[0].contiguous();
  std::copy(r.data_ptr<double>(), r.data_ptr<double>() + r.numel(), values.begin());
}

std::vector<uint8_t> broadcast_bytes(ProcessGroup& g, const std::vector<uint8_t>& bytes) {
  // The length first, so that the other ranks can size their buffer.
  std::vector<at::Tensor> n = {torch::tensor({int64_t(bytes.size())}, torch::kInt64)};
  g.wait(g.pg->broadcast(n), "broadcast");
  int64_t len = n[0].item<int64_t>();
  auto buf = g.spec.rank == 0 ? torch::from_blob(const_cast<uint8_t*>(bytes.data()), {len}, torch::kUInt8).clone()
                              : torch::empty({len}, torch::kUInt8);
  std::vector<at::Tensor> t = {buf};
  if (len > 0) g.wait(g.pg->broadcast(t), "broadcast");
  return std::vector<uint8_t>(buf.data_ptr<uint8_t>(), buf.data_ptr<uint8_t>() + len);
}

void barrier(ProcessGroup& g) { g.wait(g.pg->barrier(), "barrier"); }

namespace {

// DistributedDataParallel's reducer over the parameters trainable when it was attached.
class Ddp : public GradSync {
 public:
  std::shared_ptr<ProcessGroup> group;
  std::vector<torch::Tensor> params;
  std::unordered_map<size_t, std::string> names;
  std::vector<std::vector<size_t>> buckets;
  std::vector<int64_t> bucket_limits;
  int64_t bucket_cap = 0;
  int find_unused = -1;  // -1: decided at the first backward that syncs
  std::unique_ptr<c10d::Reducer> reducer;
  bool sync = true;

  void before_backward(const torch::Tensor& loss) override {
    if (!sync) return;  // no_sync: gradients accumulate locally until a backward that syncs
    try {
      if (!reducer) create(loss);
      // DDP's pre-forward: after the first step the buckets are re-cut in the order gradients became ready.
      reducer->rebuild_buckets();
      reducer->prepare_for_backward(find_unused ? std::vector<at::Tensor>{loss} : std::vector<at::Tensor>{});
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      group->failed("gradient reduction", e);
    }
  }

  [[noreturn]] void failed(const std::exception& e) override { group->failed("gradient reduction", e); }

 private:
  // The Reducer, made at the first backward so that, unless told, it can see whether every trainable parameter is
  // in the loss's graph: find_unused_parameters (a graph walk every step) only when one is not, on any rank.
  void create(const torch::Tensor& loss) {
    if (find_unused < 0) {
      std::vector<double> unused = {reachable(loss) < params.size() ? 1.0 : 0.0};
      all_reduce(*group, unused, "max");
      find_unused = unused[0] > 0 ? 1 : 0;
    }
    reducer =
        std::make_unique<c10d::Reducer>(params, buckets, group->pg, std::vector<bool>(params.size(), false), bucket_cap, find_unused == 1,
                                        false, names, int64_t(c10d::kDefaultFirstBucketBytes), false, false, bucket_limits);
  }

  // How many of the trainable parameters the loss's graph reaches.
  size_t reachable(const torch::Tensor& loss) const {
    std::unordered_set<torch::autograd::Node*> seen;
    std::unordered_set<c10::TensorImpl*> found;
    std::vector<torch::autograd::Node*> todo;
    if (loss.grad_fn()) todo.push_back(loss.grad_fn().get());
    while (!todo.empty()) {
      auto* fn = todo.back();
      todo.pop_back();
      if (!seen.insert(fn).second) continue;
      if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(fn)) found.insert(acc->variable.unsafeGetTensorImpl());
      for (const auto& edge : fn->next_edges())
        if (edge.function) todo.push_back(edge.function.get());
    }
    size_t n = 0;
    for (const auto& p : params) n += found.count(p.unsafeGetTensorImpl());
    return n;
  }
};

std::vector<torch::Tensor> all_parameters(Model& m) {
  std::vector<torch::Tensor> out;
  for (const auto& name : m.order) out.push_back(m.params.at(name));
  return out;
}

}  // namespace

void ddp_attach(Model& m, std::shared_ptr<ProcessGroup> g, const DdpSpec& spec) {
  require(m.device.is_cpu(), "E_DEVICE", "data-parallel training on " + m.device.str() + " needs NCCL, which this build lacks");
  require(spec.bucket_mb > 0, "E_ARG", "bucketMb must be > 0");
  m.grad_sync.reset();  // the old reducer's hooks go before the new one's are installed
  torch::NoGradGuard no_grad;
  auto all = all_parameters(m);
  std::vector<torch::Tensor> params;
  std::unordered_map<size_t, std::string> names;
  for (const auto& name : m.order) {
    const auto& p = m.params.at(name);
    if (!p.requires_grad()) continue;
    names[params.size()] = name;
    params.push_back(p);
  }
  require(!params.empty(), "E_STATE", "the model has no trainable parameter to train data-parallel");
  try {
    // DDP's checks and start: the same parameter shapes on every rank, then rank 0's values everywhere (frozen weights
    // too: a head initialised from a different seed would otherwise differ).
    c10d::verify_params_across_processes(g->pg, all, std::nullopt);
    c10d::broadcast_coalesced(g->pg, all, size_t(250) << 20, 0);
  } catch (const std::exception& e) {
    g->failed("the parameter broadcast from rank 0", e);
  }
  auto cap = size_t(spec.bucket_mb * 1024 * 1024);
  std::vector<size_t> limits = {size_t(c10d::kDefaultFirstBucketBytes), cap};
  auto [buckets, per_bucket] = c10d::compute_bucket_assignment_by_size(params, limits, std::vector<bool>(params.size(), false));
  // Parameters are listed in forward order; their gradients arrive in roughly the reverse, so the buckets go last first.
  std::reverse(buckets.begin(), buckets.end());
  std::reverse(per_bucket.begin(), per_bucket.end());
  auto ddp = std::make_shared<Ddp>();
  ddp->group = g;
  ddp->params = std::move(params);
  ddp->names = std::move(names);
  ddp->buckets = std::move(buckets);
  ddp->bucket_limits.assign(per_bucket.begin(), per_bucket.end());
  ddp->bucket_cap = int64_t(cap);
  ddp->find_unused = spec.find_unused_parameters;
  m.grad_sync = ddp;
}

void ddp_detach(Model& m) { m.grad_sync.reset(); }

void ddp_set_sync(Model& m, bool sync) {
  auto* ddp = dynamic_cast<Ddp*>(m.grad_sync.get());
  require(ddp != nullptr, "E_STATE", "the model is not attached to a process group");
  ddp->sync = sync;
}

}  // namespace tunekit
