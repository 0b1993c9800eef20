// lowbit/optim/cuda_memory.cuh
// Memory policies for optimizers whose tensors live on a CUDA device:
//   memory::device      states in cudaMalloc'd memory; the fused step runs as
//                       a CUDA kernel on `stream`. With slab_bytes set, the
//                       state arrays are carved from a few large
//                       allocations instead of one cudaMalloc each.
//   memory::paged       states in CUDA managed memory, prefetched to the GPU
//                       before each tensor's step and, with evict_after_step,
//                       back to the host after it (bitsandbytes' paged
//                       optimizers). Where the device cannot access managed
//                       memory concurrently it falls back to device memory
//                       and says so once on stderr. It never asks for more
//                       managed memory than the device has free.
//   memory::cpu_offload states (and a mirror of each weight) in pinned host
//                       memory; each step copies the gradient to the host,
//                       runs the CPU executor, and copies the weight back.
// All three give the same bits as memory::host for the same inputs.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "../cuda/check.cuh"
#include "cpu_step.hpp"
#include "cuda_step.cuh"
#include "policies.hpp"

namespace lowbit {
namespace optim {
namespace memory {

namespace detail {
// Zeroed device memory handed out in 256-byte aligned pieces from slabs
// (large cudaMalloc'd blocks), first fit; a piece over half a slab gets a
// slab of its own. Nothing is returned before the owner goes: an
// optimizer allocates its states once and frees them all together. Why:
// a GPU driver maps each cudaMalloc in whole pages (2 MiB on current
// GPUs), so hundreds of state arrays each waste up to a page; carved from
// slabs, only each slab does.
class device_slabs {
 public:
  device_slabs() = default;
  device_slabs(const device_slabs&) = delete;
  device_slabs& operator=(const device_slabs&) = delete;
  ~device_slabs() {
    for (const slab& s : slabs_) cudaFree(s.base);
  }
  void* carve(size_t bytes, size_t slab_bytes) {
    const size_t need = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    if (need > slab_bytes / 2) return add(need, true).base;
    for (slab& s : slabs_)
      if (!s.dedicated && s.size - s.used >= need) return take(s, need);
    return take(add(slab_bytes, false), need);
  }
  bool owns(const void* p) const {
    for (const slab& s : slabs_)
      if (p >= s.base && p < s.base + s.size) return true;
    return false;
  }
  size_t slab_count() const { return slabs_.size(); }

 private:
  struct slab {
    char* base;
    size_t size, used;
    bool dedicated;
  };
  slab& add(size_t size, bool dedicated) {
    void* p = nullptr;
    LOWBIT_CUDA_CHECK(cudaMalloc(&p, size));
    slabs_.push_back(slab{static_cast<char*>(p), size, dedicated ? size : 0, dedicated});
    LOWBIT_CUDA_CHECK(cudaMemset(p, 0, size));
    return slabs_.back();
  }
  static void* take(slab& s, size_t need) {
    void* p = s.base + s.used;
    s.used += need;
    return p;
  }
  std::vector<slab> slabs_;
};
// Device memory of the deferred gradient checks: one flag, reused by every
// check of a step (a check and the step that reads it are queued back to
// back on one stream), and one skip counter per parameter.
class deferred_check_counters {
 public:
  deferred_check_counters() = default;
  deferred_check_counters(const deferred_check_counters&) = delete;
  deferred_check_counters& operator=(const deferred_check_counters&) = delete;
  ~deferred_check_counters() { cudaFree(base_); }
  void begin(int n_params, cudaStream_t stream) {
    if (base_ == nullptr || n_params > capacity_) {  // at a step's start: no kernel of this optimizer is in flight
      cudaFree(base_);
      base_ = nullptr;
      LOWBIT_CUDA_CHECK(cudaMalloc(&base_, sizeof(int) * size_t(n_params + 1)));
      capacity_ = n_params;
    }
    LOWBIT_CUDA_CHECK(cudaMemsetAsync(base_, 0, sizeof(int) * size_t(capacity_ + 1), stream));
  }
  int* flag() { return base_; }
  int* skips(int param) { return base_ + 1 + param; }
  std::vector<int> download(int n_params) const {
    std::vector<int> out(size_t(n_params), 0);
    if (n_params > 0) LOWBIT_CUDA_CHECK(cudaMemcpy(out.data(), base_ + 1, sizeof(int) * size_t(n_params), cudaMemcpyDeviceToHost));
    return out;
  }

 private:
  int* base_ = nullptr;
  int capacity_ = 0;
};
}  // namespace detail

struct device : memory_policy_tag {
  static constexpr const char* name = "device";
  static constexpr bool runs_on_device = true;
  cudaStream_t stream = nullptr;
  // 0 (the default): one cudaMalloc per state array. Otherwise the arrays
  // are carved from slabs of this many bytes (detail::device_slabs); set
  // it before the first add_param. The sum of optimizer::allocated_bytes_for
  // over the tensors makes one slab; arrays over half a slab get their own
  // allocation.
  size_t slab_bytes = 0;
  void* allocate(size_t bytes) {
    if (slab_bytes > 0) return slabs_->carve(bytes, slab_bytes);
    void* p = nullptr;
    LOWBIT_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    LOWBIT_CUDA_CHECK(cudaMemset(p, 0, bytes ? bytes : 1));
    return p;
  }
  void release(void* p) {
    if (!slabs_->owns(p)) cudaFree(p);  // slab pieces go with the slabs
  }
  size_t slab_count() const { return slabs_->slab_count(); }
  lowbit::device state_device() const { return lowbit::device::cuda(); }
  bool accepts(const lowbit::device& d) const { return d.device_accessible(); }
  void copy_to_host(void* dst, const void* src, size_t bytes) const {
    LOWBIT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
  }
  void copy_from_host(void* dst, const void* src, size_t bytes) const {
    LOWBIT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
  }
  void init_master(float* master, const storage_view& working) {
    cuda_widen_to_f32(master, working, stream);
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  grad_stats gradient_stats(const void* g, dtype t, int64_t n) { return cuda_grad_stats(g, t, n, stream); }
  std::vector<grad_stats> gradient_stats_all(const std::vector<tensor_view>& grads, const std::vector<int64_t>& n) {
    return cuda_grad_stats_all(grads, n, stream);
  }
  template <class Rule>
  void run(const fused_step_args& a, const typename Rule::consts& c) {
    cuda_fused_step<Rule>(a, c, stream);
  }
  void synchronize() { LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream)); }

  // Deferred gradient checks (optimizer_options::defer_gradient_checks):
  // the verdicts stay on the device until the step ends, so stepping a
  // tensor never waits for the GPU. Per step: begin (zeroes one skip
  // counter per parameter), one queued check per step_param(_range) call
  // (returns the flag its step kernel reads), then the counters, read once
  // after end_step's synchronization.
  void begin_deferred_checks(int n_params) { checks_->begin(n_params, stream); }
  const int* queue_gradient_check(const void* g, dtype t, int64_t n, int param) {
    cuda_queue_gradient_check(g, t, n, checks_->flag(), checks_->skips(param), stream);
    return checks_->flag();
  }
  std::vector<int> deferred_skips(int n_params) const { return checks_->download(n_params); }

 private:
  // Shared, so copies of a policy release through the same slabs; freed
  // when the last copy goes.
  std::shared_ptr<detail::device_slabs> slabs_ = std::make_shared<detail::device_slabs>();
  std::shared_ptr<detail::deferred_check_counters> checks_ = std::make_shared<detail::deferred_check_counters>();
};

struct paged : device {
  static constexpr const char* name = "paged";
  bool evict_after_step = false;  // prefetch states back to the host after each tensor's step
  bool managed = true;            // false after falling back to device memory
  std::map<const void*, size_t> sizes;

  void* allocate(size_t bytes) {
    int dev = 0, concurrent = 0;
    LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
    LOWBIT_CUDA_CHECK(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, dev));
    if (!concurrent && managed) {
      managed = false;
      std::fprintf(stderr,
                   "lowbit: memory::paged: this device has no concurrent managed access; using device memory\n");
    }
    if (!managed) return device::allocate(bytes);
    size_t free_b = 0, total_b = 0;
    LOWBIT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    require(bytes < free_b, errc::unsupported,
            "memory::paged: refusing to allocate " + std::to_string(bytes) + " bytes of managed memory with only " +
                std::to_string(free_b) + " bytes free on the device (oversubscription can hang the GPU)");
    void* p = nullptr;
    LOWBIT_CUDA_CHECK(cudaMallocManaged(&p, bytes ? bytes : 1));
    std::memset(p, 0, bytes ? bytes : 1);
    sizes[p] = bytes ? bytes : 1;
    return p;
  }
  lowbit::device state_device() const { return managed ? lowbit::device::managed() : lowbit::device::cuda(); }
  void prefetch(const storage_view& s, bool to_device) {
    if (!managed || s.kind == storage_kind::none) return;
    const void* ptrs[2] = {s.data, s.is_blockwise() ? static_cast<const void*>(s.q.absmax) : nullptr};
    for (const void* p : ptrs) {
      auto it = sizes.find(p);
      if (it == sizes.end()) continue;
      int dev = 0;
      LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
#if CUDART_VERSION >= 13000
      cudaMemLocation loc{};
      loc.type = to_device ? cudaMemLocationTypeDevice : cudaMemLocationTypeHost;
      loc.id = to_device ? dev : 0;
      LOWBIT_CUDA_CHECK(cudaMemPrefetchAsync(p, it->second, loc, 0, stream));
#else
      LOWBIT_CUDA_CHECK(cudaMemPrefetchAsync(p, it->second, to_device ? dev : cudaCpuDeviceId, stream));
#endif
    }
  }
  template <class Rule>
  void run(const fused_step_args& a, const typename Rule::consts& c) {
    prefetch(a.state1, true);
    prefetch(a.state2, true);
    cuda_fused_step<Rule>(a, c, stream);
    if (evict_after_step) {
      prefetch(a.state1, false);
      prefetch(a.state2, false);
    }
  }
  // Managed buffers are released with cudaFree like device ones.
};

struct cpu_offload : memory_policy_tag {
  static constexpr const char* name = "cpu_offload";
  static constexpr bool runs_on_device = false;
  cudaStream_t stream = nullptr;
  // per weight (keyed by its device codes/data pointer): a pinned host mirror
  struct mirror {
    storage_view host;
    std::vector<std::pair<void*, const void*>> pairs;  // (host, device)
    std::vector<size_t> bytes;
  };
  std::map<const void*, mirror> mirrors;
  void* staging = nullptr;
  size_t staging_bytes = 0;

  ~cpu_offload() {
    for (auto& m : mirrors)
      for (auto& p : m.second.pairs) cudaFreeHost(p.first);
    if (staging) cudaFreeHost(staging);
  }
  void* allocate(size_t bytes) {
    void* p = nullptr;
    LOWBIT_CUDA_CHECK(cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault));
    std::memset(p, 0, bytes ? bytes : 1);
    return p;
  }
  void release(void* p) { cudaFreeHost(p); }
  lowbit::device state_device() const { return lowbit::device::cpu(); }
  // Weights and gradients are device tensors; states are host-side.
  bool accepts(const lowbit::device& d) const { return d.device_accessible(); }
  void copy_to_host(void* dst, const void* src, size_t bytes) const { std::memcpy(dst, src, bytes); }
  void copy_from_host(void* dst, const void* src, size_t bytes) const { std::memcpy(dst, src, bytes); }
  void init_master(float* master, const storage_view& working) {
    // the master lives in pinned host memory; widen from a host copy
    std::vector<uint16_t> tmp(size_t(working.n));
    LOWBIT_CUDA_CHECK(cudaMemcpy(tmp.data(), working.data, size_t(working.n) * 2, cudaMemcpyDefault));
    for (int64_t i = 0; i < working.n; ++i) master[i] = load_dense(working.kind, tmp.data(), i);
  }
  grad_stats gradient_stats(const void* g, dtype t, int64_t n) { return cuda_grad_stats(g, t, n, stream); }
  std::vector<grad_stats> gradient_stats_all(const std::vector<tensor_view>& grads, const std::vector<int64_t>& n) {
    return cuda_grad_stats_all(grads, n, stream);
  }

  mirror& mirror_of(const storage_view& w) {
    auto it = mirrors.find(w.data);
    if (it != mirrors.end()) return it->second;
    mirror m;
    m.host = w;
    auto add = [&](void* dev_ptr, size_t bytes) -> void* {
      if (!dev_ptr) return nullptr;
      void* h = allocate(bytes);
      m.pairs.push_back({h, dev_ptr});
      m.bytes.push_back(bytes);
      return h;
    };
    if (w.is_blockwise()) {
      const blockwise_layout& l = w.q.layout;
      m.host.q.codes = static_cast<uint8_t*>(add(w.q.codes, size_t(l.code_bytes())));
      m.host.data = m.host.q.codes;
      m.host.q.absmax = static_cast<float*>(add(w.q.absmax, size_t(l.n_blocks()) * 4));
      m.host.q.absmax_codes = static_cast<uint8_t*>(add(w.q.absmax_codes, size_t(l.n_blocks())));
      m.host.q.nested_absmax = static_cast<float*>(add(w.q.nested_absmax, size_t(l.n_nested_blocks()) * 4));
      m.host.q.nested_offset = static_cast<float*>(add(w.q.nested_offset, 4));
      m.host.q.dev = lowbit::device::cpu();
    } else {
      m.host.data = add(w.data, size_t(w.bytes()));
    }
    return mirrors.emplace(w.data, std::move(m)).first->second;
  }
  void copy_mirror(mirror& m, bool to_host) {
    for (size_t i = 0; i < m.pairs.size(); ++i)
      LOWBIT_CUDA_CHECK(cudaMemcpyAsync(to_host ? m.pairs[i].first : const_cast<void*>(m.pairs[i].second),
                                        to_host ? m.pairs[i].second : m.pairs[i].first, m.bytes[i],
                                        cudaMemcpyDefault, stream));
  }
  template <class Rule>
  void run(const fused_step_args& a, const typename Rule::consts& c) {
    fused_step_args h = a;
    // the weight: device tensor mirrored in pinned memory (unless it is the
    // optimizer-owned fp32 master, which already lives in host memory)
    mirror* wm = nullptr;
    cudaPointerAttributes attr{};
    LOWBIT_CUDA_CHECK(cudaPointerGetAttributes(&attr, a.weight.data));
    if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) {
      wm = &mirror_of(a.weight);
      copy_mirror(*wm, true);
      h.weight = wm->host;
    }
    mirror* cm = nullptr;
    if (a.weight_copy.kind != storage_kind::none) {
      cm = &mirror_of(a.weight_copy);
      h.weight_copy = cm->host;
    }
    const size_t gbytes = size_t(a.weight.n) * dtype_size(a.grad_type);
    if (gbytes > staging_bytes) {
      if (staging) cudaFreeHost(staging);
      LOWBIT_CUDA_CHECK(cudaHostAlloc(&staging, gbytes, cudaHostAllocDefault));
      staging_bytes = gbytes;
    }
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(staging, a.grad, gbytes, cudaMemcpyDefault, stream));
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
    h.grad = staging;
    cpu_fused_step<Rule>(h, c);
    if (wm) copy_mirror(*wm, false);
    if (cm) copy_mirror(*cm, false);
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  void synchronize() { LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream)); }
};

}  // namespace memory
}  // namespace optim
}  // namespace lowbit
