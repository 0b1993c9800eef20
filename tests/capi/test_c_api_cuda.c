/* tests/capi/test_c_api_cuda.c
 * liblowbit_c's GPU side from plain C99: CUDA tensors (cudaMalloc'd
 * memory described by kDLCUDA DLTensors) on a stream of the caller's.
 * Built twice (tests/CMakeLists.txt): against the real CUDA runtime and a
 * CUDA build of liblowbit_c (a GPU test: exits 77, CTest's skip code, when
 * no device is present), and against the CPU CUDA emulator and its fake
 * runtime (runs everywhere). Checks, each an exact property or against a
 * float64 reference:
 *   - quantize and dequantize on the device give the host's bytes and
 *     values, bit for bit (nf4 nested, int8, dynamic8; odd sizes);
 *   - the dequant-GEMM forward and input gradient on the device against a
 *     float64 product of the host-dequantized weight, within an fp32
 *     accumulation bound;
 *   - a device optimizer (memory "device") and a host one of the same
 *     composition and seed end with the same bytes after several steps
 *     (QFT's lion/int8/int8 and adamw/int8/fp32), including a skipped
 *     non-finite gradient, device states as an in-memory image equal to the
 *     saved file and loaded back, and device states saved then loaded into a host
 *     optimizer continue identically;
 *   - tensors of one call on two sides are refused, naming the argument. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "c_test_support.h"
#include "lowbit_c.h"

#define CUDA_OK(call) CHECK((call) == cudaSuccess, "%s", #call)

static cudaStream_t stream;

/* A tensor descriptor and its shape; t.shape points into the struct, so a
 * tensor is set up in place (init_tensor) and never copied. */
typedef struct {
  DLTensor t;
  int64_t shape[2];
} tensor;

static void init_tensor(tensor* x, void* data, int on_device, DLDataTypeCode code, int bits, int64_t rows,
                        int64_t cols) {
  memset(x, 0, sizeof *x);
  x->t.data = data;
  x->t.device.device_type = on_device ? kDLCUDA : kDLCPU;
  x->t.device.device_id = 0;
  x->shape[0] = rows;
  x->shape[1] = cols;
  x->t.ndim = cols > 0 ? 2 : 1;
  x->t.shape = x->shape;
  x->t.dtype.code = (uint8_t)code;
  x->t.dtype.bits = (uint8_t)bits;
  x->t.dtype.lanes = 1;
}

static void* device_copy(const void* host, size_t bytes) {
  void* d = NULL;
  CUDA_OK(cudaMalloc(&d, bytes ? bytes : 1));
  if (bytes) CUDA_OK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
  return d;
}

static void host_copy(void* host, const void* dev, size_t bytes) {
  CUDA_OK(cudaStreamSynchronize(stream));
  if (bytes) CUDA_OK(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
}


/* A quantized tensor's buffers on the host and on the device. */
typedef struct {
  lowbit_c_quantized_sizes_t sizes;
  uint8_t *codes, *scale_codes;
  float *absmax, *nested_absmax, nested_offset;
  void *d_codes, *d_scales, *d_nested_absmax, *d_nested_offset;
  tensor h[4], d[4]; /* codes, scales, nested absmax, nested offset */
  lowbit_c_quantized hq, dq;
} quantized;

static void quantized_init(quantized* q, const char* format, int64_t n, int block, int nested) {
  memset(q, 0, sizeof *q);
  CHECK(lowbit_c_quantized_sizes(format, n, block, nested, &q->sizes) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  const int64_t cb = q->sizes.code_bytes, nb = q->sizes.n_blocks, nn = q->sizes.n_nested_blocks;
  q->codes = calloc((size_t)cb + 1, 1);
  q->scale_codes = calloc((size_t)nb + 1, 1);
  q->absmax = calloc((size_t)nb + 1, sizeof(float));
  q->nested_absmax = calloc((size_t)nn + 1, sizeof(float));
  q->d_codes = device_copy(q->codes, (size_t)cb);
  q->d_scales = device_copy(q->absmax, (size_t)nb * (nested ? 1 : 4));
  q->d_nested_absmax = device_copy(q->nested_absmax, (size_t)nn * 4);
  q->d_nested_offset = device_copy(&q->nested_offset, 4);
  init_tensor(&q->h[0], q->codes, 0, kDLUInt, 8, cb, 0);
  init_tensor(&q->d[0], q->d_codes, 1, kDLUInt, 8, cb, 0);
  if (nested) {
    init_tensor(&q->h[1], q->scale_codes, 0, kDLUInt, 8, nb, 0);
    init_tensor(&q->d[1], q->d_scales, 1, kDLUInt, 8, nb, 0);
  } else {
    init_tensor(&q->h[1], q->absmax, 0, kDLFloat, 32, nb, 0);
    init_tensor(&q->d[1], q->d_scales, 1, kDLFloat, 32, nb, 0);
  }
  init_tensor(&q->h[2], q->nested_absmax, 0, kDLFloat, 32, nn, 0);
  init_tensor(&q->d[2], q->d_nested_absmax, 1, kDLFloat, 32, nn, 0);
  init_tensor(&q->h[3], &q->nested_offset, 0, kDLFloat, 32, 1, 0);
  init_tensor(&q->d[3], q->d_nested_offset, 1, kDLFloat, 32, 1, 0);
  lowbit_c_quantized base = {format, n, block, nested, NULL, NULL, NULL, NULL, NULL};
  q->hq = q->dq = base;
  q->hq.codes = &q->h[0].t;
  q->dq.codes = &q->d[0].t;
  if (nested) {
    q->hq.absmax_codes = &q->h[1].t;
    q->dq.absmax_codes = &q->d[1].t;
    q->hq.nested_absmax = &q->h[2].t;
    q->dq.nested_absmax = &q->d[2].t;
    q->hq.nested_offset = &q->h[3].t;
    q->dq.nested_offset = &q->d[3].t;
  } else {
    q->hq.absmax = &q->h[1].t;
    q->dq.absmax = &q->d[1].t;
  }
}

/* 1 when the device buffers hold the host buffers' bytes. */
static int quantized_same(const quantized* q) {
  const size_t cb = (size_t)q->sizes.code_bytes, nb = (size_t)q->sizes.n_blocks,
               nn = (size_t)q->sizes.n_nested_blocks;
  const int nested = q->hq.nested;
  unsigned char* tmp = malloc(cb + 4 * nb + 4 * nn + 8);
  int same = 1;
  host_copy(tmp, q->d_codes, cb);
  same = same && memcmp(tmp, q->codes, cb) == 0;
  host_copy(tmp, q->d_scales, nested ? nb : 4 * nb);
  same = same && memcmp(tmp, nested ? (void*)q->scale_codes : (void*)q->absmax, nested ? nb : 4 * nb) == 0;
  if (nested) {
    host_copy(tmp, q->d_nested_absmax, 4 * nn);
    same = same && memcmp(tmp, q->nested_absmax, 4 * nn) == 0;
    host_copy(tmp, q->d_nested_offset, 4);
    same = same && memcmp(tmp, &q->nested_offset, 4) == 0;
  }
  free(tmp);
  return same;
}

static void quantized_free(quantized* q) {
  free(q->codes);
  free(q->scale_codes);
  free(q->absmax);
  free(q->nested_absmax);
  cudaFree(q->d_codes);
  cudaFree(q->d_scales);
  cudaFree(q->d_nested_absmax);
  cudaFree(q->d_nested_offset);
}

static void test_quantize_matches_host(const char* format, int64_t n, int block, int nested) {
  float* x = malloc((size_t)n * 4);
  float* y_host = malloc((size_t)n * 4);
  float* y_dev = malloc((size_t)n * 4);
  for (int64_t i = 0; i < n; ++i) x[i] = (float)(uniform() * (1 + i % 7));
  void* dx = device_copy(x, (size_t)n * 4);
  void* dy = device_copy(x, (size_t)n * 4);
  tensor hx, tdx;
  init_tensor(&hx, x, 0, kDLFloat, 32, n, 0);
  init_tensor(&tdx, dx, 1, kDLFloat, 32, n, 0);
  tensor hy, tdy;
  init_tensor(&hy, y_host, 0, kDLFloat, 32, n, 0);
  init_tensor(&tdy, dy, 1, kDLFloat, 32, n, 0);
  quantized q;
  quantized_init(&q, format, n, block, nested);
  CHECK(lowbit_c_quantize(&hx.t, &q.hq) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(lowbit_c_quantize(&tdx.t, &q.dq) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(quantized_same(&q), "%s n=%lld nested=%d: device codes differ from the host's", format, (long long)n, nested);
  CHECK(lowbit_c_dequantize(&q.hq, &hy.t) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(lowbit_c_dequantize(&q.dq, &tdy.t) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  host_copy(y_dev, dy, (size_t)n * 4);
  CHECK(memcmp(y_dev, y_host, (size_t)n * 4) == 0, "%s: device dequantize differs from the host's", format);

  /* one call, two sides: device input, host codes */
  CHECK(lowbit_c_quantize(&tdx.t, &q.hq) == LOWBIT_C_INVALID_ARGUMENT, "device input with host codes accepted");
  CHECK(strstr(lowbit_c_last_error(), "out.codes") != NULL, "message: %s", lowbit_c_last_error());
  quantized_free(&q);
  cudaFree(dx);
  cudaFree(dy);
  free(x);
  free(y_host);
  free(y_dev);
}

/* y = x W^T and dx = dy W on the device against float64 products of the
 * host-dequantized W: |err| <= 1e-5 sum |a||w| (fp32 accumulation of at
 * most 300 terms, about 40 ulps) plus 1e-30. */
static void test_gemm(void) {
  enum { M = 3, n = 37, k = 300 };
  static float w[n * k], wq[n * k], x[M * k], y[M * n], dy[M * n], dx[M * k];
  for (int i = 0; i < n * k; ++i) w[i] = (float)uniform();
  for (int i = 0; i < M * k; ++i) x[i] = (float)uniform();
  for (int i = 0; i < M * n; ++i) dy[i] = (float)uniform();
  quantized q;
  quantized_init(&q, "nf4", n * k, 64, 1);
  tensor hw, hwq;
  init_tensor(&hw, w, 0, kDLFloat, 32, n * k, 0);
  init_tensor(&hwq, wq, 0, kDLFloat, 32, n * k, 0);
  CHECK(lowbit_c_quantize(&hw.t, &q.hq) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(lowbit_c_dequantize(&q.hq, &hwq.t) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CUDA_OK(cudaMemcpy(q.d_codes, q.codes, (size_t)q.sizes.code_bytes, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(q.d_scales, q.scale_codes, (size_t)q.sizes.n_blocks, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(q.d_nested_absmax, q.nested_absmax, (size_t)q.sizes.n_nested_blocks * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(q.d_nested_offset, &q.nested_offset, 4, cudaMemcpyHostToDevice));
  void *d_x = device_copy(x, sizeof x), *d_y = device_copy(y, sizeof y);
  void *d_dy = device_copy(dy, sizeof dy), *d_dx = device_copy(dx, sizeof dx);
  tensor tx, ty;
  init_tensor(&tx, d_x, 1, kDLFloat, 32, M, k);
  init_tensor(&ty, d_y, 1, kDLFloat, 32, M, n);
  tensor tdy, tdx;
  init_tensor(&tdy, d_dy, 1, kDLFloat, 32, M, n);
  init_tensor(&tdx, d_dx, 1, kDLFloat, 32, M, k);
  CHECK(lowbit_c_dequant_gemm_forward(&tx.t, &q.dq, n, k, NULL, &ty.t) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(lowbit_c_dequant_gemm_backward_input(&tdy.t, &q.dq, n, k, &tdx.t) == LOWBIT_C_OK, "%s",
        lowbit_c_last_error());
  host_copy(y, d_y, sizeof y);
  host_copy(dx, d_dx, sizeof dx);
  for (int m = 0; m < M; ++m) {
    for (int j = 0; j < n; ++j) {
      double ref = 0, mag = 0;
      for (int i = 0; i < k; ++i) {
        ref += (double)x[m * k + i] * wq[j * k + i];
        mag += fabs((double)x[m * k + i] * wq[j * k + i]);
      }
      CHECK(fabs(y[m * n + j] - ref) <= 1e-5 * mag + 1e-30, "y[%d,%d] = %g, reference %g", m, j, y[m * n + j], ref);
    }
    for (int i = 0; i < k; ++i) {
      double ref = 0, mag = 0;
      for (int j = 0; j < n; ++j) {
        ref += (double)dy[m * n + j] * wq[j * k + i];
        mag += fabs((double)dy[m * n + j] * wq[j * k + i]);
      }
      CHECK(fabs(dx[m * k + i] - ref) <= 1e-5 * mag + 1e-30, "dx[%d,%d] = %g, reference %g", m, i, dx[m * k + i],
            ref);
    }
  }
  /* device x with a host y */
  tensor hy;
  init_tensor(&hy, y, 0, kDLFloat, 32, M, n);
  CHECK(lowbit_c_dequant_gemm_forward(&tx.t, &q.dq, n, k, NULL, &hy.t) == LOWBIT_C_INVALID_ARGUMENT,
        "host y accepted for a device call");
  CHECK(strstr(lowbit_c_last_error(), ": y") != NULL, "message: %s", lowbit_c_last_error());
  quantized_free(&q);
  cudaFree(d_x);
  cudaFree(d_y);
  cudaFree(d_dy);
  cudaFree(d_dx);
}

static lowbit_c_optimizer* make_optimizer(const char* rule, const char* states, const char* weights,
                                          const char* memory) {
  lowbit_c_optimizer_config c;
  memset(&c, 0, sizeof c);
  c.rule = rule;
  c.states = states;
  c.weights = weights;
  c.memory = memory;
  c.hparams.lr = strcmp(rule, "lion") == 0 ? 3e-3f : 1e-2f;
  c.hparams.beta1 = 0.9f;
  c.hparams.beta2 = strcmp(rule, "lion") == 0 ? 0.99f : 0.999f;
  c.hparams.eps = 1e-8f;
  c.seed = 1234;
  c.stable_weight_scales = strcmp(weights, "int8") == 0;
  c.check_gradients = 1;
  lowbit_c_optimizer* opt = NULL;
  CHECK(lowbit_c_optimizer_create(&c, &opt) == LOWBIT_C_OK, "%s/%s/%s/%s: %s", rule, states, weights, memory,
        lowbit_c_last_error());
  return opt;
}

/* The same steps on a host and a device optimizer: the same bytes. */
static void test_optimizer_device_equals_host(int quantized_weights) {
  enum { n = 5000, steps = 4 };
  const char* rule = quantized_weights ? "lion" : "adamw";
  const char* weights = quantized_weights ? "int8" : "fp32";
  static float w[n], w_dev_back[n], g[n];
  for (int i = 0; i < n; ++i) w[i] = (float)(uniform() * 0.05);
  lowbit_c_optimizer* host = make_optimizer(rule, "int8", weights, "host");
  lowbit_c_optimizer* dev = make_optimizer(rule, "int8", weights, "device");
  if (!host || !dev) return;
  CHECK(lowbit_c_optimizer_set_stream(dev, stream) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(lowbit_c_optimizer_set_stream(host, stream) == LOWBIT_C_INVALID_ARGUMENT, "a stream for a host optimizer");
  int32_t index;
  quantized q;
  void* d_w = device_copy(w, sizeof w);
  tensor hw, dw;
  init_tensor(&hw, w, 0, kDLFloat, 32, n, 0);
  init_tensor(&dw, d_w, 1, kDLFloat, 32, n, 0);
  if (quantized_weights) {
    quantized_init(&q, "int8", n, 256, 0);
    CHECK(lowbit_c_quantize(&hw.t, &q.hq) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    CHECK(lowbit_c_quantize(&dw.t, &q.dq) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    CHECK(lowbit_c_optimizer_add_quantized_param(dev, &q.hq, 0, "w", &index) == LOWBIT_C_INVALID_ARGUMENT,
          "host weight accepted by a device optimizer");
    CHECK(lowbit_c_optimizer_add_quantized_param(host, &q.hq, 0, "w", &index) == LOWBIT_C_OK, "%s",
          lowbit_c_last_error());
    CHECK(lowbit_c_optimizer_add_quantized_param(dev, &q.dq, 0, "w", &index) == LOWBIT_C_OK, "%s",
          lowbit_c_last_error());
  } else {
    CHECK(lowbit_c_optimizer_add_param(dev, &hw.t, 0, "w", &index) == LOWBIT_C_INVALID_ARGUMENT,
          "host weight accepted by a device optimizer");
    CHECK(strstr(lowbit_c_last_error(), "weight") != NULL, "message: %s", lowbit_c_last_error());
    CHECK(lowbit_c_optimizer_add_param(host, &hw.t, 0, "w", &index) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    CHECK(lowbit_c_optimizer_add_param(dev, &dw.t, 0, "w", &index) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  }
  void* d_g = device_copy(g, sizeof g);
  tensor hg, dg;
  init_tensor(&hg, g, 0, kDLFloat, 32, n, 0);
  init_tensor(&dg, d_g, 1, kDLFloat, 32, n, 0);
  for (int t = 0; t < steps; ++t) {
    for (int i = 0; i < n; ++i) g[i] = (float)(uniform() * 0.1);
    if (t == 2) g[123] = INFINITY; /* this step is skipped on both */
    CUDA_OK(cudaMemcpy(d_g, g, sizeof g, cudaMemcpyHostToDevice));
    const DLTensor* hgs[1] = {&hg.t};
    const DLTensor* dgs[1] = {&dg.t};
    lowbit_c_step_report rh, rd;
    CHECK(lowbit_c_optimizer_step(host, hgs, 1, &rh) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    CHECK(lowbit_c_optimizer_step(dev, dgs, 1, &rd) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    CHECK(rh.skipped == (t == 2) && rd.skipped == (t == 2), "step %d skipped: host %d device %d", t, rh.skipped,
          rd.skipped);
    CHECK(rh.grad_norm == rd.grad_norm, "step %d grad norm: host %.17g device %.17g", t, rh.grad_norm, rd.grad_norm);
    CHECK(lowbit_c_optimizer_step(dev, hgs, 1, &rd) == LOWBIT_C_INVALID_ARGUMENT, "host gradient accepted");
  }
  if (quantized_weights) {
    CHECK(quantized_same(&q), "lion/int8/int8: device weights differ from the host's");
  } else {
    host_copy(w_dev_back, d_w, sizeof w);
    CHECK(memcmp(w_dev_back, w, sizeof w) == 0, "adamw/int8/fp32: device weights differ from the host's");
  }
  /* device states saved, loaded into a new host optimizer over a copy of
   * the host weights: one more step of each equal */
  const char* path = quantized_weights ? "test_c_api_cuda_lion.safetensors" : "test_c_api_cuda_adamw.safetensors";
  CHECK(lowbit_c_optimizer_save(dev, path) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  /* the device states as an image in memory: the file's bytes; loaded back
   * into the device optimizer, they give the same image again */
  uint64_t size = 0;
  CHECK(lowbit_c_optimizer_save_to_memory(dev, NULL, 0, &size) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  uint8_t* image = (uint8_t*)malloc(size + 1);
  uint8_t* again = (uint8_t*)malloc(size + 1);
  CHECK(lowbit_c_optimizer_save_to_memory(dev, image, size, &size) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  FILE* f = fopen(path, "rb");
  const size_t got = f ? fread(again, 1, size + 1, f) : 0;
  if (f) fclose(f);
  CHECK(got == size && memcmp(again, image, size) == 0, "device state image differs from the saved file");
  CHECK(lowbit_c_optimizer_load_from_memory(dev, image, size) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  uint64_t size2 = 0;
  CHECK(lowbit_c_optimizer_save_to_memory(dev, again, size, &size2) == LOWBIT_C_OK && size2 == size &&
            memcmp(again, image, size) == 0,
        "device states loaded from memory do not save back the same");
  free(image);
  free(again);
  lowbit_c_optimizer* reloaded = make_optimizer(rule, "int8", weights, "host");
  if (!quantized_weights && reloaded) {
    static float w2[n];
    memcpy(w2, w, sizeof w);
    tensor hw2;
    init_tensor(&hw2, w2, 0, kDLFloat, 32, n, 0);
    CHECK(lowbit_c_optimizer_add_param(reloaded, &hw2.t, 0, "w", &index) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    CHECK(lowbit_c_optimizer_load(reloaded, path) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    for (int i = 0; i < n; ++i) g[i] = (float)(uniform() * 0.1);
    CUDA_OK(cudaMemcpy(d_g, g, sizeof g, cudaMemcpyHostToDevice));
    const DLTensor* hgs[1] = {&hg.t};
    const DLTensor* dgs[1] = {&dg.t};
    CHECK(lowbit_c_optimizer_step(reloaded, hgs, 1, NULL) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    CHECK(lowbit_c_optimizer_step(dev, dgs, 1, NULL) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    host_copy(w_dev_back, d_w, sizeof w);
    CHECK(memcmp(w_dev_back, w2, sizeof w) == 0, "device states reloaded on the host: continuation differs");
  }
  lowbit_c_optimizer_destroy(reloaded);
  remove(path);
  lowbit_c_optimizer_destroy(host);
  lowbit_c_optimizer_destroy(dev);
  if (quantized_weights) quantized_free(&q);
  cudaFree(d_w);
  cudaFree(d_g);
}

int main(void) {
  rng_state = 0x2545f4914f6cdd1dull; /* its own stream */
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    fprintf(stderr, "SKIPPED: no CUDA device available; the C interface's GPU checks were not run\n");
    return 77;
  }
  CHECK(lowbit_c_has_cuda() == 1, "liblowbit_c built without CUDA");
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CHECK(lowbit_c_set_stream(stream) == LOWBIT_C_OK && lowbit_c_get_stream() == (void*)stream, "stream not kept");
  CHECK(strstr(lowbit_c_optimizer_compositions(), "lion/int8/int8/device") != NULL, "%s",
        lowbit_c_optimizer_compositions());
  test_quantize_matches_host("nf4", 4999, 64, 1);
  test_quantize_matches_host("int8", 5000, 256, 0);
  test_quantize_matches_host("dynamic8", 777, 128, 0);
  test_gemm();
  test_optimizer_device_equals_host(0);
  test_optimizer_device_equals_host(1);
  cudaStreamDestroy(stream);
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("test_c_api_cuda: all checks passed\n");
  return 0;
}
