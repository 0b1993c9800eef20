/* lowbit_c.h
 * The C interface of lowbit, for callers that cannot instantiate C++
 * templates: Python (ctypes; the `lowbit` package in python/), Julia, Rust,
 * C. It is a thin, stable layer over the header-only library, built as the
 * shared library liblowbit_c (capi/). Tensors cross it as DLPack DLTensor
 * pointers (<dlpack/dlpack.h>, the 0.6 ABI) that the caller keeps alive for
 * the duration of the call, or, for registered optimizer weights, for the
 * life of the optimizer: nothing the caller passes is copied or owned,
 * except the optimizer's own states.
 *
 * Where a call runs: where its first tensor lives. Host memory (kDLCPU,
 * pinned kDLCUDAHost) runs lowbit's CPU functions on its thread pool; CUDA
 * device or managed memory (kDLCUDA, kDLCUDAManaged) runs lowbit's CUDA
 * kernels on the calling thread's stream (lowbit_c_set_stream), in builds
 * made with nvcc (lowbit_c_has_cuda() == 1; others refuse CUDA tensors
 * with LOWBIT_C_UNSUPPORTED). Nothing is copied between host and device
 * behind the caller's back. The optimizer's composition (update rule,
 * state storage, weight storage, memory) is chosen at run time by name
 * from the set this library instantiates (lowbit_c_optimizer_compositions
 * lists them).
 *
 * Errors: every function returns a lowbit_c_status; on failure
 * lowbit_c_last_error() gives the library's message (naming the argument
 * that was wrong) for the calling thread, and nothing the caller owns has
 * been modified except where a function says otherwise (lowbit_c_quantize
 * of non-finite input). */
#ifndef LOWBIT_C_H
#define LOWBIT_C_H

#include <stdint.h>

#include <dlpack/dlpack.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LOWBIT_C_API __declspec(dllexport)
#else
#define LOWBIT_C_API __attribute__((visibility("default")))
#endif

/* Bumped on any incompatible change of this header. */
#define LOWBIT_C_ABI_VERSION 3

typedef enum lowbit_c_status {
  LOWBIT_C_OK = 0,
  LOWBIT_C_INVALID_ARGUMENT = 1, /* a size, shape, dtype, name or pointer is wrong */
  LOWBIT_C_UNSUPPORTED = 2,      /* valid, but not served by this build (e.g. a CUDA tensor) */
  LOWBIT_C_NON_FINITE = 3,       /* NaN or infinity where a finite value is required */
  LOWBIT_C_IO = 4,               /* a file could not be opened, read or written */
  LOWBIT_C_MALFORMED_FILE = 5,   /* a file's contents violate its format */
  LOWBIT_C_CUDA = 6,             /* the CUDA runtime reported an error */
  LOWBIT_C_INTERNAL = 7          /* anything else (out of memory, a bug): the message says what */
} lowbit_c_status;

LOWBIT_C_API int lowbit_c_abi_version(void);
/* The message of the last failed call on this thread ("" if none). */
LOWBIT_C_API const char* lowbit_c_last_error(void);
/* 1 when this library was built with CUDA (GPU tensors accepted), else 0. */
LOWBIT_C_API int lowbit_c_has_cuda(void);
/* The CUDA stream (a cudaStream_t) of this thread's later GPU calls
 * (quantize, dequantize, dequant-GEMM); NULL, the default, is the legacy
 * default stream. GPU calls are asynchronous on it, except quantize, which
 * waits for its check of the input's finiteness. */
LOWBIT_C_API int lowbit_c_set_stream(void* stream);
LOWBIT_C_API void* lowbit_c_get_stream(void);

/* ---- quantized tensors ------------------------------------------------ */

/* One blockwise-quantized tensor of `numel` elements (docs/FORMATS.md): the
 * format by name ("nf4", "fp4", "int4", "int8", "dynamic8", "udynamic8",
 * "dynamic4", "ulinear4"), the block size (a power of two in [32, 4096]),
 * and nested != 0 for double-quantized scales. The buffers, each a
 * contiguous 1-D CPU tensor:
 *   codes          uint8   [code_bytes]      (two 4-bit codes per byte, element 2j high)
 *   absmax         float32 [n_blocks]        (nested == 0; else NULL)
 *   absmax_codes   uint8   [n_blocks]        (nested != 0; else NULL)
 *   nested_absmax  float32 [n_nested_blocks] (nested != 0; else NULL)
 *   nested_offset  float32 [1]               (nested != 0; else NULL)
 * Sizes from lowbit_c_quantized_sizes. */
typedef struct lowbit_c_quantized {
  const char* format;
  int64_t numel;
  int32_t block_size;
  int32_t nested;
  const DLTensor* codes;
  const DLTensor* absmax;
  const DLTensor* absmax_codes;
  const DLTensor* nested_absmax;
  const DLTensor* nested_offset;
} lowbit_c_quantized;

typedef struct lowbit_c_quantized_sizes_t {
  int64_t code_bytes;
  int64_t n_blocks;
  int64_t n_nested_blocks;
  int64_t total_bytes; /* codes + scales + nested scales, as stored */
} lowbit_c_quantized_sizes_t;

LOWBIT_C_API int lowbit_c_quantized_sizes(const char* format, int64_t numel, int32_t block_size, int32_t nested,
                                          lowbit_c_quantized_sizes_t* sizes);

/* input: float32 / bfloat16 / float16, contiguous, numel elements. Input
 * with NaN or infinity: LOWBIT_C_NON_FINITE naming the first bad block, and
 * `out` then holds unspecified contents (the one failure that writes). */
LOWBIT_C_API int lowbit_c_quantize(const DLTensor* input, const lowbit_c_quantized* out);
/* output: float32 / bfloat16 / float16, contiguous, numel elements. */
LOWBIT_C_API int lowbit_c_dequantize(const lowbit_c_quantized* in, const DLTensor* output);

/* W is the quantized tensor read as a row-major n x k matrix (numel = n k).
 *   forward:         y[M, n]  = x[M, k] W^T (+ bias[n], float32, may be NULL)
 *   backward_input:  dx[M, k] = dy[M, n] W
 * Activations and outputs float32 / bfloat16 / float16, 2-D, contiguous;
 * fp32 accumulation (lowbit::cpu::dequant_gemm_*). */
LOWBIT_C_API int lowbit_c_dequant_gemm_forward(const DLTensor* x, const lowbit_c_quantized* w, int64_t n, int64_t k,
                                               const DLTensor* bias, const DLTensor* y);
LOWBIT_C_API int lowbit_c_dequant_gemm_backward_input(const DLTensor* dy, const lowbit_c_quantized* w, int64_t n,
                                                      int64_t k, const DLTensor* dx);

/* ---- optimizers --------------------------------------------------------- */

typedef struct lowbit_c_optimizer lowbit_c_optimizer; /* opaque */

/* Hyperparameters of one parameter group; each rule reads its own:
 *   adamw, adam: lr, beta1, beta2, eps, weight_decay
 *   lion:        lr, beta1, beta2, weight_decay
 *   sgd:         lr, momentum, weight_decay
 * (docs/OPTIMIZERS.md, "Formulas"). */
typedef struct lowbit_c_hparams {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;
  float momentum;
} lowbit_c_hparams;

typedef struct lowbit_c_optimizer_config {
  const char* rule;    /* "adamw", "adam", "lion", "sgd" */
  const char* states;  /* "fp32", "bf16", "int8", "int4" */
  const char* weights; /* "fp32", "bf16" (stochastic rounding), "fp32_master_bf16",
                          or a quantized format: "int8", "nf4", "int4", "fp4" */
  lowbit_c_hparams hparams; /* group 0 */
  uint64_t seed;            /* stochastic rounding stream */
  float max_grad_norm;      /* > 0: global-norm clipping (lowbit_c_optimizer_step only) */
  float max_update;         /* > 0: clamp every element's update */
  int32_t stable_weight_scales; /* quantized weights: keep block scales unless outgrown */
  int32_t check_gradients;      /* != 0 (recommended): skip tensors with non-finite gradients */
  const char* memory; /* "host" (or NULL): states in host memory, the step on CPU threads, host tensors;
                         "device" (CUDA builds): states in device memory, lowbit's fused CUDA step on the
                         optimizer's stream (lowbit_c_optimizer_set_stream), device tensors */
} lowbit_c_optimizer_config;

typedef struct lowbit_c_step_report {
  int64_t step;       /* the optimizer step just taken (1-based) */
  double grad_norm;   /* global L2 norm of the finite gradients: lowbit_c_optimizer_step with
                         check_gradients; -1 when not computed (check_gradients 0, end_step) */
  float grad_scale;   /* clipping factor applied */
  int32_t skipped;    /* tensors skipped for non-finite gradients */
} lowbit_c_step_report;

typedef struct lowbit_c_memory_report {
  int64_t params;
  int64_t weight_bytes; /* the caller's weights as stored (codes + scales when quantized) */
  int64_t master_bytes; /* optimizer-owned float32 master weights */
  int64_t state_bytes;  /* optimizer states and their scales */
} lowbit_c_memory_report;

typedef struct lowbit_c_param_info {
  int64_t numel;
  int32_t group;
  int64_t steps;   /* updates applied */
  int64_t skipped; /* updates skipped for non-finite gradients */
} lowbit_c_param_info;

/* A space-separated list of the "rule/states/weights/memory" compositions
 * this library instantiates (static storage). */
LOWBIT_C_API const char* lowbit_c_optimizer_compositions(void);

LOWBIT_C_API int lowbit_c_optimizer_create(const lowbit_c_optimizer_config* config, lowbit_c_optimizer** out);
LOWBIT_C_API void lowbit_c_optimizer_destroy(lowbit_c_optimizer* opt);
/* "rule/states/weights/memory" of this optimizer (valid while it lives). */
LOWBIT_C_API const char* lowbit_c_optimizer_composition(const lowbit_c_optimizer* opt);
/* memory "device" optimizers: the cudaStream_t their steps run on (NULL: the
 * legacy default stream). Steps synchronize it once at their end. */
LOWBIT_C_API int lowbit_c_optimizer_set_stream(lowbit_c_optimizer* opt, void* stream);

LOWBIT_C_API int lowbit_c_optimizer_add_group(lowbit_c_optimizer* opt, const lowbit_c_hparams* hparams,
                                              int32_t* index);
LOWBIT_C_API int lowbit_c_optimizer_set_hparams(lowbit_c_optimizer* opt, int32_t group,
                                                const lowbit_c_hparams* hparams);
LOWBIT_C_API int lowbit_c_optimizer_get_hparams(const lowbit_c_optimizer* opt, int32_t group,
                                                lowbit_c_hparams* hparams);

/* Registers the caller's weight, updated in place by every step; it must stay
 * alive and in place while the optimizer lives. Dense weights (fp32, bf16,
 * fp32_master_bf16 compositions) through add_param; quantized ones through
 * add_quantized_param. `name` (may be NULL: "paramN") keys saved states. */
LOWBIT_C_API int lowbit_c_optimizer_add_param(lowbit_c_optimizer* opt, const DLTensor* weight, int32_t group,
                                              const char* name, int32_t* index);
LOWBIT_C_API int lowbit_c_optimizer_add_quantized_param(lowbit_c_optimizer* opt, const lowbit_c_quantized* weight,
                                                        int32_t group, const char* name, int32_t* index);
LOWBIT_C_API int lowbit_c_optimizer_size(const lowbit_c_optimizer* opt, int32_t* count);
LOWBIT_C_API int lowbit_c_optimizer_param_info(const lowbit_c_optimizer* opt, int32_t index,
                                               lowbit_c_param_info* info);

/* One step over every registered parameter: grads[i] is parameter i's
 * gradient (float32 / bfloat16 / float16, same element count), count equal
 * to the number of parameters. report may be NULL. */
LOWBIT_C_API int lowbit_c_optimizer_step(lowbit_c_optimizer* opt, const DLTensor* const* grads, int32_t count,
                                         lowbit_c_step_report* report);
/* The same step one tensor at a time (parameters without a gradient are
 * left alone): begin, then step_param for each gradient as it is ready
 * (grad_scale multiplies the gradient, e.g. a clipping factor of your own;
 * *applied = 0 when the tensor was skipped), then end. */
LOWBIT_C_API int lowbit_c_optimizer_begin_step(lowbit_c_optimizer* opt);
LOWBIT_C_API int lowbit_c_optimizer_step_param(lowbit_c_optimizer* opt, int32_t index, const DLTensor* grad,
                                               float grad_scale, int32_t* applied);
LOWBIT_C_API int lowbit_c_optimizer_end_step(lowbit_c_optimizer* opt, lowbit_c_step_report* report);

LOWBIT_C_API int lowbit_c_optimizer_memory(const lowbit_c_optimizer* opt, lowbit_c_memory_report* report);

/* States (not the caller's weights) to / from a safetensors file, with
 * bitsandbytes' per-parameter key names (docs/OPTIMIZERS.md). The file is
 * written to a temporary name and renamed; a load checks everything before
 * changing anything. */
LOWBIT_C_API int lowbit_c_optimizer_save(const lowbit_c_optimizer* opt, const char* path);
LOWBIT_C_API int lowbit_c_optimizer_load(lowbit_c_optimizer* opt, const char* path);
/* The same safetensors image in memory (for frameworks that keep optimizer
 * state in their own checkpoints). save_to_memory sets *size to the image's
 * size and, when buffer is not NULL and capacity >= *size, writes the image
 * there; buffer NULL is a size query. A smaller buffer gives
 * LOWBIT_C_INVALID_ARGUMENT and is left untouched (*size says what is
 * needed). Each call builds the image anew (memory "device" states are copied
 * to the host), so query and write between the same two steps.
 * load_from_memory checks the image as load checks a file. */
LOWBIT_C_API int lowbit_c_optimizer_save_to_memory(const lowbit_c_optimizer* opt, void* buffer, uint64_t capacity,
                                                   uint64_t* size);
LOWBIT_C_API int lowbit_c_optimizer_load_from_memory(lowbit_c_optimizer* opt, const void* data, uint64_t size);

#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_C_H */
