// examples/llama/cuda/device_weights.cuh
// The weights on the GPU: a device mirror of a host weight_store<float>
// with the same carving (the RMSNorm gains in one float32 buffer; the
// matrices in one dense float32 / bfloat16 buffer, or as quantized codes +
// scales, bitsandbytes layout, all carved from one allocation).
// upload() copies the host store in (after random init, Hugging Face
// loading or a checkpoint load); download() copies it back (before a
// checkpoint save). The optimizer updates the device copy in place through
// the views this class hands out; matrix() gives the linear layers a
// matrix_ref with device pointers.
#pragma once

#include <cstdint>
#include <vector>

#include <lowbit/lowbit.hpp>

#include "../parameters.hpp"
#include "device_buffer.cuh"

namespace llama {
namespace gpu {

class device_weights {
 public:
  explicit device_weights(const weight_store<float>& host) : layout(host.layout), kind(host.kind) {
    vectors_.resize(int64_t(host.vectors.size()));
    if (kind == matrix_storage::f32) m32_.resize(int64_t(host.m32.size()));
    if (kind == matrix_storage::bf16) m16_.resize(int64_t(host.m16.size()));
    lowbit::require(kind != matrix_storage::f64, lowbit::errc::unsupported,
                    "the CUDA trainer has no float64 weights (the gradient check runs on the CPU)");
    // All quantized matrices in ONE allocation, carved like the host store
    // (llm.c's single parameter buffer): per tensor codes | absmax (float32)
    // or absmax codes | nested absmax | nested offset, each part 16-byte
    // aligned (the GEMM kernels vectorize aligned code loads) and each
    // tensor 256-byte aligned. One allocation instead of one per matrix
    // also spares the driver's rounding of every allocation to its page
    // size (LLaMA-3.2-1B: 113 matrices).
    auto up16 = [](int64_t b) { return (b + 15) / 16 * 16; };
    struct parts {
      int64_t codes, scales, nested, total;
    };
    std::vector<parts> sizes;
    int64_t arena = 0;
    for (const lowbit::quantized_tensor& q : host.mq) {
      const lowbit::blockwise_layout& l = q.layout;
      parts z;
      z.codes = up16(l.code_bytes());
      z.scales = up16(l.nested ? l.n_blocks() : 4 * l.n_blocks());
      z.nested = l.nested ? up16(4 * l.n_nested_blocks()) + 16 : 0;
      z.total = (z.codes + z.scales + z.nested + 255) / 256 * 256;
      sizes.push_back(z);
      arena += z.total;
    }
    qarena_.resize(arena);
    int64_t offset = 0;
    for (size_t t = 0; t < host.mq.size(); ++t) {
      const lowbit::blockwise_layout& l = host.mq[t].layout;
      const parts& z = sizes[t];
      uint8_t* base = qarena_.data() + offset;
      offset += z.total;
      lowbit::quantized_view v;
      v.layout = l;
      v.codes = base;
      if (l.nested) {
        v.absmax_codes = base + z.codes;
        v.nested_absmax = reinterpret_cast<float*>(base + z.codes + z.scales);
        v.nested_offset = reinterpret_cast<float*>(base + z.codes + z.scales + up16(4 * l.n_nested_blocks()));
      } else {
        v.absmax = reinterpret_cast<float*>(base + z.codes);
      }
      v.dev = lowbit::device::cuda();
      qviews_.push_back(v);
    }
    upload(host);
  }

  void upload(const weight_store<float>& host) {
    vectors_.upload(host.vectors.data(), int64_t(host.vectors.size()));
    if (kind == matrix_storage::f32) m32_.upload(host.m32.data(), int64_t(host.m32.size()));
    if (kind == matrix_storage::bf16) m16_.upload(host.m16.data(), int64_t(host.m16.size()));
    for (size_t i = 0; i < qviews_.size(); ++i)
      copy_quantized(const_cast<lowbit::quantized_tensor&>(host.mq[i]), qviews_[i], true);
  }

  void download(weight_store<float>& host) const {
    vectors_.download(host.vectors.data(), int64_t(host.vectors.size()));
    if (kind == matrix_storage::f32) m32_.download(host.m32.data(), int64_t(host.m32.size()));
    if (kind == matrix_storage::bf16) m16_.download(host.m16.data(), int64_t(host.m16.size()));
    for (size_t i = 0; i < qviews_.size(); ++i)
      copy_quantized(const_cast<lowbit::quantized_tensor&>(host.mq[i]), qviews_[i], false);
  }

  const param_info& info(int p) const { return layout->params[size_t(p)]; }
  const float* vector(int p) const { return vectors_.data() + info(p).offset; }

  matrix_ref matrix(int p) const {
    const param_info& i = info(p);
    matrix_ref r;
    r.kind = kind;
    r.rows = i.shape[0];
    r.cols = i.shape[1];
    if (kind == matrix_storage::f32) r.data = m32_.data() + i.offset;
    if (kind == matrix_storage::bf16) r.data = m16_.data() + i.offset;
    if (kind == matrix_storage::quantized) r.q = qviews_[size_t(i.slot)];
    return r;
  }

  // The views the optimizer updates in place (the names weight_store uses).
  lowbit::tensor_view vector_view(int p) {
    return lowbit::make_flat_view(vectors_.data() + info(p).offset, info(p).numel, lowbit::device::cuda());
  }
  lowbit::tensor_view dense_view(int p) {
    const param_info& i = info(p);
    if (kind == matrix_storage::f32)
      return lowbit::make_view(m32_.data() + i.offset, {i.shape[0], i.shape[1]}, lowbit::device::cuda());
    if (kind == matrix_storage::bf16)
      return lowbit::make_view(m16_.data() + i.offset, {i.shape[0], i.shape[1]}, lowbit::device::cuda());
    throw lowbit::error(lowbit::errc::invalid_argument, "device_weights: matrices are not dense");
  }
  lowbit::quantized_view quantized_view(int p) { return qviews_[size_t(info(p).slot)]; }

  // Bytes on the device as the trainer reports them (codes + scales, as
  // weight_store::bytes counts; the alignment padding is not counted).
  int64_t bytes() const {
    int64_t b = vectors_.bytes() + m32_.bytes() + m16_.bytes();
    for (const lowbit::quantized_view& q : qviews_) b += q.layout.total_bytes();
    return b;
  }

  const param_layout* layout;
  matrix_storage kind;

 private:
  static void copy_quantized(lowbit::quantized_tensor& h, const lowbit::quantized_view& d, bool to_device) {
    const lowbit::blockwise_layout& l = h.layout;
    auto cp = [&](void* dev, void* host, size_t bytes) {
      if (bytes == 0) return;
      LOWBIT_CUDA_CHECK(to_device ? cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice)
                                  : cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
    };
    cp(d.codes, h.codes.data(), size_t(l.code_bytes()));
    if (l.nested) {
      cp(d.absmax_codes, h.absmax_codes.data(), size_t(l.n_blocks()));
      cp(d.nested_absmax, h.nested_absmax.data(), size_t(l.n_nested_blocks()) * 4);
      cp(d.nested_offset, &h.nested_offset, 4);
    } else {
      cp(d.absmax, h.absmax.data(), size_t(l.n_blocks()) * 4);
    }
  }

  device_array<float> vectors_;
  device_array<float> m32_;
  device_array<lowbit::bf16> m16_;
  device_array<uint8_t> qarena_;  // every quantized matrix (qviews_ point into it)
  std::vector<lowbit::quantized_view> qviews_;
};

}  // namespace gpu
}  // namespace llama
