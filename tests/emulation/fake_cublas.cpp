// tests/emulation/fake_cublas.cpp
// A host-only stand-in for the part of cuBLAS that lowbit and the LLaMA
// example call (handles, streams, cublasGemmEx, cublasGemmStridedBatchedEx),
// linked instead of libcublas into tests that run CUDA code under
// cuda_emulator.hpp with fake_cuda_runtime.cpp. Same C signatures as
// cublas_api.h, so the linker takes these definitions.
//
// Semantics are cuBLAS's (column-major; C = alpha op(A) op(B) + beta C, C
// not read when beta is 0, host-pointer alpha / beta in float for the
// float32 compute types). Operands are float32, bfloat16 or float16; each
// output is summed in double in k order, scaled in float and rounded once
// to C's type (round to nearest even): one valid order among those cuBLAS
// may use, so tests bound the difference, never expect bits. Under
// LOWBIT_EMULATOR_SKIP_COMPUTE (emulator_options.hpp) GEMMs check their
// arguments and return without computing. Arguments
// cuBLAS rejects (negative sizes, leading dimensions too small, unsupported
// types or compute types) return its error statuses, not garbage.
#include <cublas_v2.h>

#include <lowbit/core/dtype.hpp>

#include "emulator_options.hpp"

#include <cstdint>

struct cublasContext {
  cudaStream_t stream = nullptr;
};

namespace {

bool supported_type(cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16BF || t == CUDA_R_16F; }

double load(const void* base, cudaDataType t, int64_t i) {
  switch (t) {
    case CUDA_R_32F: return double(static_cast<const float*>(base)[i]);
    case CUDA_R_16BF: return double(lowbit::to_float(static_cast<const lowbit::bf16*>(base)[i]));
    default: return double(lowbit::to_float(static_cast<const lowbit::fp16*>(base)[i]));
  }
}

void store(void* base, cudaDataType t, int64_t i, float v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(base)[i] = v; return;
    case CUDA_R_16BF: static_cast<lowbit::bf16*>(base)[i] = lowbit::to_bf16(v); return;
    default: static_cast<lowbit::fp16*>(base)[i] = lowbit::to_fp16(v); return;
  }
}

// One product of the batch: A, B, C already offset to their batch entry.
void gemm_one(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const void* A,
              cudaDataType at, int lda, const void* B, cudaDataType bt, int ldb, float beta, void* C, cudaDataType ct,
              int ldc) {
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double s = 0.0;
      for (int l = 0; l < k; ++l) {
        const int64_t ia = ta == CUBLAS_OP_N ? int64_t(i) + int64_t(l) * lda : int64_t(l) + int64_t(i) * lda;
        const int64_t ib = tb == CUBLAS_OP_N ? int64_t(l) + int64_t(j) * ldb : int64_t(j) + int64_t(l) * ldb;
        s += load(A, at, ia) * load(B, bt, ib);
      }
      const int64_t ic = int64_t(i) + int64_t(j) * ldc;
      float v = alpha * float(s);
      if (beta != 0.0f) v += beta * float(load(C, ct, ic));
      store(C, ct, ic, v);
    }
}

cublasStatus_t check(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                     const void* alpha, cudaDataType at, int lda, cudaDataType bt, int ldb, const void* beta,
                     cudaDataType ct, int ldc, cublasComputeType_t compute, int batch) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m < 0 || n < 0 || k < 0 || batch < 0 || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  const int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
  if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!supported_type(at) || !supported_type(bt) || !supported_type(ct) || at != bt)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC) return CUBLAS_STATUS_NOT_SUPPORTED;
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS (fake cuBLAS)";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED (fake cuBLAS)";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE (fake cuBLAS)";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED (fake cuBLAS)";
    default: return "cuBLAS error (fake cuBLAS)";
  }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t) {
  const cublasStatus_t st = check(handle, transa, transb, m, n, k, alpha, Atype, lda, Btype, ldb, beta, Ctype, ldc,
                                  computeType, 1);
  if (st != CUBLAS_STATUS_SUCCESS || emulator_options::skip_compute()) return st;
  gemm_one(transa, transb, m, n, k, *static_cast<const float*>(alpha), A, Atype, lda, B, Btype, ldb,
           *static_cast<const float*>(beta), C, Ctype, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void* beta, void* C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t) {
  const cublasStatus_t st = check(handle, transa, transb, m, n, k, alpha, Atype, lda, Btype, ldb, beta, Ctype, ldc,
                                  computeType, batchCount);
  if (st != CUBLAS_STATUS_SUCCESS || emulator_options::skip_compute()) return st;
  const size_t as = lowbit::dtype_size(Atype == CUDA_R_32F ? lowbit::dtype::f32 : lowbit::dtype::bf16);
  const size_t cs = lowbit::dtype_size(Ctype == CUDA_R_32F ? lowbit::dtype::f32 : lowbit::dtype::bf16);
  for (int b = 0; b < batchCount; ++b)
    gemm_one(transa, transb, m, n, k, *static_cast<const float*>(alpha),
             static_cast<const char*>(A) + b * strideA * int64_t(as), Atype, lda,
             static_cast<const char*>(B) + b * strideB * int64_t(as), Btype, ldb, *static_cast<const float*>(beta),
             static_cast<char*>(C) + b * strideC * int64_t(cs), Ctype, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
