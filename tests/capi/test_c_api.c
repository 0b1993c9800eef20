/* tests/capi/test_c_api.c
 * liblowbit_c from plain C99: the header compiles as C, and the interface
 * works without Python. Checks (each against a float64 reference computed
 * here, or a stated exact property): layout sizes; int8 and NF4 quantize /
 * dequantize within their error bounds; typed errors with a message naming
 * the argument, leaving the caller's buffers untouched; SGD and AdamW steps
 * against float64 recurrences; a non-finite gradient skipped with the
 * weights unchanged; an unknown composition refused; the optimizer state
 * as a safetensors image in memory (equal to the saved file, loaded and
 * continued bit for bit, bad images refused). Exits 1 on the first
 * failure, printing what failed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c_test_support.h"
#include "lowbit_c.h"


static DLTensor tensor_1d(void* data, DLDataTypeCode code, int bits, int64_t* shape) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.device.device_id = 0;
  t.ndim = 1;
  t.dtype.code = (uint8_t)code;
  t.dtype.bits = (uint8_t)bits;
  t.dtype.lanes = 1;
  t.shape = shape;
  t.strides = NULL;
  t.byte_offset = 0;
  return t;
}


static void test_sizes(void) {
  lowbit_c_quantized_sizes_t s;
  CHECK(lowbit_c_quantized_sizes("nf4", 1001, 64, 0, &s) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(s.code_bytes == 501 && s.n_blocks == 16 && s.n_nested_blocks == 0, "nf4 1001/64: %lld %lld %lld",
        (long long)s.code_bytes, (long long)s.n_blocks, (long long)s.n_nested_blocks);
  CHECK(s.total_bytes == 501 + 4 * 16, "total %lld", (long long)s.total_bytes);
  CHECK(lowbit_c_quantized_sizes("int8", 100000, 64, 1, &s) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  /* 1563 blocks of 64, one code byte each; nested blocks of 256 scales */
  CHECK(s.code_bytes == 100000 && s.n_blocks == 1563 && s.n_nested_blocks == 7, "int8 nested: %lld %lld %lld",
        (long long)s.code_bytes, (long long)s.n_blocks, (long long)s.n_nested_blocks);
  CHECK(lowbit_c_quantized_sizes("nf5", 10, 64, 0, &s) == LOWBIT_C_INVALID_ARGUMENT, "unknown format accepted");
  CHECK(strstr(lowbit_c_last_error(), "nf5") != NULL, "message: %s", lowbit_c_last_error());
  CHECK(lowbit_c_quantized_sizes("nf4", 10, 48, 0, &s) == LOWBIT_C_INVALID_ARGUMENT, "block 48 accepted");
  CHECK(strstr(lowbit_c_last_error(), "block_size") != NULL, "message: %s", lowbit_c_last_error());
}

/* int8 absmax: every element within half a step (absmax / 127 / 2) of its
 * input, and the block's absmax stored exactly. */
static void test_int8_roundtrip(void) {
  enum { n = 1000, block = 64, blocks = (n + block - 1) / block };
  static float x[n], y[n], absmax[blocks];
  static uint8_t codes[n];
  for (int i = 0; i < n; ++i) x[i] = (float)(uniform() * (1 + i / 100));
  int64_t sx = n, sc = n, sa = blocks;
  DLTensor tx = tensor_1d(x, kDLFloat, 32, &sx), ty = tensor_1d(y, kDLFloat, 32, &sx);
  DLTensor tc = tensor_1d(codes, kDLUInt, 8, &sc), ta = tensor_1d(absmax, kDLFloat, 32, &sa);
  lowbit_c_quantized q = {"int8", n, block, 0, &tc, &ta, NULL, NULL, NULL};
  CHECK(lowbit_c_quantize(&tx, &q) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(lowbit_c_dequantize(&q, &ty) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  for (int b = 0; b < blocks; ++b) {
    double m = 0;
    for (int i = b * block; i < n && i < (b + 1) * block; ++i) m = fmax(m, fabs((double)x[i]));
    CHECK(absmax[b] == (float)m, "block %d absmax %g, expected %g", b, absmax[b], m);
    for (int i = b * block; i < n && i < (b + 1) * block; ++i) {
      const double err = fabs((double)y[i] - (double)x[i]);
      CHECK(err <= m / 127.0 / 2.0 * (1 + 1e-5), "element %d: |%g - %g| over half a step of %g", i, y[i], x[i], m / 127.0);
      if (err > m / 127.0 / 2.0 * (1 + 1e-5)) return;
    }
  }
}

/* NF4: every element within half of NF4's largest gap (0.3038, between
 * -1 and -0.6962) times its block's scale. */
static void test_nf4_roundtrip(void) {
  enum { n = 999, block = 64, blocks = (n + block - 1) / block };
  static float x[n], y[n], absmax[blocks];
  static uint8_t codes[(n + 1) / 2];
  for (int i = 0; i < n; ++i) x[i] = (float)uniform();
  int64_t sx = n, sc = (n + 1) / 2, sa = blocks;
  DLTensor tx = tensor_1d(x, kDLFloat, 32, &sx), ty = tensor_1d(y, kDLFloat, 32, &sx);
  DLTensor tc = tensor_1d(codes, kDLUInt, 8, &sc), ta = tensor_1d(absmax, kDLFloat, 32, &sa);
  lowbit_c_quantized q = {"nf4", n, block, 0, &tc, &ta, NULL, NULL, NULL};
  CHECK(lowbit_c_quantize(&tx, &q) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(lowbit_c_dequantize(&q, &ty) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  for (int i = 0; i < n; ++i) {
    const double bound = absmax[i / block] * (1.0 - 0.6961928009986877) / 2.0 * (1 + 1e-5);
    CHECK(fabs((double)y[i] - (double)x[i]) <= bound, "element %d: %g vs %g", i, y[i], x[i]);
  }
}

/* Bad input: typed error, message naming the argument, outputs untouched. */
static void test_errors(void) {
  enum { n = 128 };
  static int32_t xi[n];
  static float xf[n], absmax[2];
  static uint8_t codes[n], before[n];
  memset(codes, 0xAB, sizeof codes);
  memcpy(before, codes, sizeof codes);
  int64_t sx = n, sc = n, sa = 2, short_codes = n - 1;
  DLTensor tx = tensor_1d(xi, kDLInt, 32, &sx), tc = tensor_1d(codes, kDLUInt, 8, &sc);
  DLTensor ta = tensor_1d(absmax, kDLFloat, 32, &sa);
  lowbit_c_quantized q = {"int8", n, 64, 0, &tc, &ta, NULL, NULL, NULL};
  int st = lowbit_c_quantize(&tx, &q);
  CHECK(st == LOWBIT_C_INVALID_ARGUMENT || st == LOWBIT_C_UNSUPPORTED, "int32 input: status %d", st);
  CHECK(strstr(lowbit_c_last_error(), "input") != NULL, "message: %s", lowbit_c_last_error());
  CHECK(memcmp(codes, before, sizeof codes) == 0, "codes changed by a failed call");

  DLTensor txf = tensor_1d(xf, kDLFloat, 32, &sx), tshort = tensor_1d(codes, kDLUInt, 8, &short_codes);
  lowbit_c_quantized bad = {"int8", n, 64, 0, &tshort, &ta, NULL, NULL, NULL};
  CHECK(lowbit_c_quantize(&txf, &bad) == LOWBIT_C_INVALID_ARGUMENT, "short codes buffer accepted");
  CHECK(strstr(lowbit_c_last_error(), "codes") != NULL, "message: %s", lowbit_c_last_error());

  /* host input, codes labelled as CUDA memory: one call, two sides */
  DLTensor codes_on_gpu = tc;
  codes_on_gpu.device.device_type = kDLCUDA;
  lowbit_c_quantized mixed = {"int8", n, 64, 0, &codes_on_gpu, &ta, NULL, NULL, NULL};
  CHECK(lowbit_c_quantize(&txf, &mixed) == LOWBIT_C_INVALID_ARGUMENT, "host input with CUDA codes accepted");
  CHECK(strstr(lowbit_c_last_error(), "out.codes") != NULL && strstr(lowbit_c_last_error(), "one side") != NULL,
        "message: %s", lowbit_c_last_error());
  CHECK(memcmp(codes, before, sizeof codes) == 0, "codes changed by a failed call");
  if (!lowbit_c_has_cuda()) {
    /* a CPU-only build refuses CUDA tensors by name (never dereferenced) */
    DLTensor on_gpu = txf;
    on_gpu.device.device_type = kDLCUDA;
    CHECK(lowbit_c_quantize(&on_gpu, &q) == LOWBIT_C_UNSUPPORTED, "a CUDA tensor accepted");
    CHECK(strstr(lowbit_c_last_error(), "no CUDA support") != NULL, "message: %s", lowbit_c_last_error());
    CHECK(memcmp(codes, before, sizeof codes) == 0, "codes changed by a failed call");
  }

  lowbit_c_optimizer_config c;
  memset(&c, 0, sizeof c);
  c.rule = "adamx";
  c.states = "fp32";
  c.weights = "fp32";
  c.hparams.lr = 1e-3f;
  lowbit_c_optimizer* opt = (lowbit_c_optimizer*)&c; /* must be reset to NULL */
  CHECK(lowbit_c_optimizer_create(&c, &opt) == LOWBIT_C_INVALID_ARGUMENT, "rule adamx accepted");
  CHECK(opt == NULL, "out not cleared on failure");
  CHECK(strstr(lowbit_c_last_error(), "adamw") != NULL, "message does not list the rules: %s", lowbit_c_last_error());
  c.rule = "sgd";
  c.weights = "nf4"; /* quantized weights are instantiated for adamw and lion only */
  c.states = "int8";
  CHECK(lowbit_c_optimizer_create(&c, &opt) == LOWBIT_C_UNSUPPORTED, "sgd/int8/nf4 accepted");
  CHECK(strstr(lowbit_c_last_error(), "lion/int8/nf4/host") != NULL, "message: %s", lowbit_c_last_error());
  c.rule = "lion";
  c.memory = "paged";
  CHECK(lowbit_c_optimizer_create(&c, &opt) != LOWBIT_C_OK, "memory paged accepted");
  CHECK(strstr(lowbit_c_last_error(), "memory") != NULL, "message: %s", lowbit_c_last_error());
  if (!lowbit_c_has_cuda()) {
    c.memory = "device";
    CHECK(lowbit_c_optimizer_create(&c, &opt) == LOWBIT_C_UNSUPPORTED, "memory device accepted without CUDA");
    CHECK(strstr(lowbit_c_last_error(), "no CUDA support") != NULL, "message: %s", lowbit_c_last_error());
  }
}

/* SGD with momentum and AdamW (fp32 states and weights) against float64
 * recurrences of docs/OPTIMIZERS.md's formulas. */
static void test_optimizer_steps(void) {
  enum { n = 300, steps = 20 };
  static float w_sgd[n], w_adam[n], g[n];
  static double r_sgd[n], m_sgd[n], r_adam[n], m1[n], m2[n];
  for (int i = 0; i < n; ++i) {
    w_sgd[i] = w_adam[i] = (float)uniform();
    r_sgd[i] = r_adam[i] = w_sgd[i];
  }
  int64_t sn = n;
  DLTensor tw_sgd = tensor_1d(w_sgd, kDLFloat, 32, &sn), tw_adam = tensor_1d(w_adam, kDLFloat, 32, &sn);
  DLTensor tg = tensor_1d(g, kDLFloat, 32, &sn);

  lowbit_c_optimizer_config c;
  memset(&c, 0, sizeof c);
  c.rule = "sgd";
  c.states = "fp32";
  c.weights = "fp32";
  c.hparams.lr = 0.05f;
  c.hparams.momentum = 0.9f;
  c.check_gradients = 1;
  lowbit_c_optimizer *sgd = NULL, *adam = NULL;
  CHECK(lowbit_c_optimizer_create(&c, &sgd) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  c.rule = "adamw";
  c.hparams.lr = 1e-2f;
  c.hparams.beta1 = 0.9f;
  c.hparams.beta2 = 0.999f;
  c.hparams.eps = 1e-8f;
  c.hparams.weight_decay = 0.01f;
  CHECK(lowbit_c_optimizer_create(&c, &adam) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  if (!sgd || !adam) return;
  int32_t index = -1;
  CHECK(lowbit_c_optimizer_add_param(sgd, &tw_sgd, 0, "w", &index) == LOWBIT_C_OK && index == 0, "%s",
        lowbit_c_last_error());
  CHECK(lowbit_c_optimizer_add_param(adam, &tw_adam, 0, "w", &index) == LOWBIT_C_OK && index == 0, "%s",
        lowbit_c_last_error());
  CHECK(strcmp(lowbit_c_optimizer_composition(adam), "adamw/fp32/fp32/host") == 0, "%s",
        lowbit_c_optimizer_composition(adam));

  const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
  for (int t = 1; t <= steps; ++t) {
    for (int i = 0; i < n; ++i) g[i] = (float)(uniform() * 0.1 + 0.01 * w_adam[i]);
    const DLTensor* grads[1] = {&tg};
    lowbit_c_step_report rep;
    CHECK(lowbit_c_optimizer_step(sgd, grads, 1, &rep) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    CHECK(lowbit_c_optimizer_step(adam, grads, 1, &rep) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    CHECK(rep.step == t && rep.skipped == 0, "report step %lld skipped %d", (long long)rep.step, rep.skipped);
    const double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    for (int i = 0; i < n; ++i) {
      m_sgd[i] = 0.9 * m_sgd[i] + g[i];
      r_sgd[i] -= 0.05 * m_sgd[i];
      m1[i] = b1 * m1[i] + (1 - b1) * g[i];
      m2[i] = b2 * m2[i] + (1 - b2) * (double)g[i] * g[i];
      r_adam[i] *= 1 - lr * wd;
      r_adam[i] -= lr * sqrt(bc2) / bc1 * m1[i] / (sqrt(m2[i]) + eps * sqrt(bc2));
    }
  }
  /* float32 arithmetic against float64: a relative 1e-5 of the weights'
   * scale (about 80 float32 ulps) after 20 steps */
  double worst_sgd = 0, worst_adam = 0;
  for (int i = 0; i < n; ++i) {
    worst_sgd = fmax(worst_sgd, fabs(w_sgd[i] - r_sgd[i]));
    worst_adam = fmax(worst_adam, fabs(w_adam[i] - r_adam[i]));
  }
  CHECK(worst_sgd <= 1e-5, "sgd off by %g", worst_sgd);
  CHECK(worst_adam <= 1e-5, "adamw off by %g", worst_adam);

  /* a NaN gradient: the tensor is skipped and keeps its bytes */
  static float kept[n];
  memcpy(kept, w_adam, sizeof kept);
  g[7] = NAN;
  const DLTensor* grads[1] = {&tg};
  lowbit_c_step_report rep;
  CHECK(lowbit_c_optimizer_step(adam, grads, 1, &rep) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(rep.skipped == 1, "skipped %d", rep.skipped);
  CHECK(memcmp(kept, w_adam, sizeof kept) == 0, "weights changed by a skipped step");
  lowbit_c_param_info info;
  CHECK(lowbit_c_optimizer_param_info(adam, 0, &info) == LOWBIT_C_OK && info.skipped == 1 && info.steps == steps,
        "info steps %lld skipped %lld", (long long)info.steps, (long long)info.skipped);

  /* wrong gradient count */
  CHECK(lowbit_c_optimizer_step(adam, grads, 2, &rep) == LOWBIT_C_INVALID_ARGUMENT, "2 gradients for 1 parameter");
  CHECK(strstr(lowbit_c_last_error(), "gradients") != NULL, "message: %s", lowbit_c_last_error());

  lowbit_c_memory_report mem;
  CHECK(lowbit_c_optimizer_memory(adam, &mem) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  CHECK(mem.params == n && mem.weight_bytes == 4 * n && mem.state_bytes == 8 * n && mem.master_bytes == 0,
        "memory %lld %lld %lld %lld", (long long)mem.params, (long long)mem.weight_bytes, (long long)mem.state_bytes,
        (long long)mem.master_bytes);
  lowbit_c_optimizer_destroy(sgd);
  lowbit_c_optimizer_destroy(adam);
}

/* The optimizer's state as a safetensors image in memory: the size query,
 * a too-small buffer refused and left untouched, the image equal to the
 * file save() writes, a load into a fresh optimizer continuing bit for bit,
 * and corrupted or mismatched images refused without changing anything. */
static lowbit_c_optimizer* int8_states_over(const char* rule, float lr, float beta2, DLTensor* weight) {
  lowbit_c_optimizer_config c;
  memset(&c, 0, sizeof c);
  c.rule = rule;
  c.states = "int8";
  c.weights = "fp32";
  c.hparams.lr = lr;
  c.hparams.beta1 = 0.9f;
  c.hparams.beta2 = beta2;
  c.hparams.eps = 1e-8f;
  c.check_gradients = 1;
  lowbit_c_optimizer* opt = NULL;
  int32_t index = -1;
  CHECK(lowbit_c_optimizer_create(&c, &opt) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  if (opt) CHECK(lowbit_c_optimizer_add_param(opt, weight, 0, "w", &index) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  return opt;
}

static lowbit_c_optimizer* adamw8_over(DLTensor* weight) { return int8_states_over("adamw", 1e-2f, 0.999f, weight); }

static uint8_t* image_of(const lowbit_c_optimizer* opt, uint64_t* size) {
  *size = 0;
  CHECK(lowbit_c_optimizer_save_to_memory(opt, NULL, 0, size) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  uint8_t* image = (uint8_t*)malloc(*size ? *size : 1);
  uint64_t written = 0;
  CHECK(lowbit_c_optimizer_save_to_memory(opt, image, *size, &written) == LOWBIT_C_OK && written == *size,
        "%s (written %llu of %llu)", lowbit_c_last_error(), (unsigned long long)written, (unsigned long long)*size);
  return image;
}

static void test_state_image(void) {
  enum { n = 5000 }; /* over 4096 elements: blockwise 8-bit states */
  static float w[n], w2[n], g[n];
  for (int i = 0; i < n; ++i) w[i] = (float)uniform();
  int64_t sn = n;
  DLTensor tw = tensor_1d(w, kDLFloat, 32, &sn), tw2 = tensor_1d(w2, kDLFloat, 32, &sn);
  DLTensor tg = tensor_1d(g, kDLFloat, 32, &sn);
  const DLTensor* grads[1] = {&tg};
  lowbit_c_optimizer* opt = adamw8_over(&tw);
  if (!opt) return;
  for (int t = 0; t < 3; ++t) {
    for (int i = 0; i < n; ++i) g[i] = (float)(uniform() * 0.1);
    CHECK(lowbit_c_optimizer_step(opt, grads, 1, NULL) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
  }

  uint64_t size = 0;
  uint8_t* image = image_of(opt, &size);
  /* codes (n bytes) and scales per state, plus a header: more than 2 n */
  CHECK(size > 2 * (uint64_t)n, "image of %llu bytes", (unsigned long long)size);

  /* a buffer one byte short: refused, untouched, the size still reported */
  uint8_t* small = (uint8_t*)malloc(size);
  memset(small, 0xab, size);
  uint64_t reported = 0;
  CHECK(lowbit_c_optimizer_save_to_memory(opt, small, size - 1, &reported) == LOWBIT_C_INVALID_ARGUMENT,
        "a short buffer was accepted");
  CHECK(reported == size, "reported %llu, needs %llu", (unsigned long long)reported, (unsigned long long)size);
  CHECK(strstr(lowbit_c_last_error(), "buffer") != NULL, "message: %s", lowbit_c_last_error());
  int untouched = 1;
  for (uint64_t i = 0; i < size; ++i) untouched &= small[i] == 0xab;
  CHECK(untouched, "a refused save_to_memory wrote into the buffer");
  free(small);

  /* the same bytes as the file save() writes */
  const char* path = "test_c_api_state.safetensors"; /* in the test's working directory */
  {
    CHECK(lowbit_c_optimizer_save(opt, path) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    FILE* f = fopen(path, "rb");
    uint8_t* file = (uint8_t*)malloc(size + 1);
    const size_t got = f ? fread(file, 1, size + 1, f) : 0;
    if (f) fclose(f);
    CHECK(got == size && memcmp(file, image, size) == 0, "file of %zu bytes differs from the image", got);
    free(file);
    remove(path);
  }

  /* loaded into a fresh optimizer over a copy of the weights: the two
   * continue identically */
  memcpy(w2, w, sizeof w);
  lowbit_c_optimizer* again = adamw8_over(&tw2);
  if (again) {
    CHECK(lowbit_c_optimizer_load_from_memory(again, image, size) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    lowbit_c_param_info info;
    CHECK(lowbit_c_optimizer_param_info(again, 0, &info) == LOWBIT_C_OK && info.steps == 3, "steps %lld",
          (long long)info.steps);
    const DLTensor* grads2[1] = {&tg};
    for (int t = 0; t < 2; ++t) {
      for (int i = 0; i < n; ++i) g[i] = (float)(uniform() * 0.1);
      CHECK(lowbit_c_optimizer_step(opt, grads, 1, NULL) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
      CHECK(lowbit_c_optimizer_step(again, grads2, 1, NULL) == LOWBIT_C_OK, "%s", lowbit_c_last_error());
    }
    CHECK(memcmp(w, w2, sizeof w) == 0, "the loaded optimizer continued differently");

    /* a corrupted header and a truncated image: refused, the state kept */
    uint64_t before_size = 0;
    uint8_t* before = image_of(again, &before_size);
    uint8_t* bad = (uint8_t*)malloc(size);
    memcpy(bad, image, size);
    bad[8] = '[';
    CHECK(lowbit_c_optimizer_load_from_memory(again, bad, size) == LOWBIT_C_MALFORMED_FILE, "%s",
          "a corrupted header was accepted");
    CHECK(lowbit_c_optimizer_load_from_memory(again, image, size / 2) == LOWBIT_C_MALFORMED_FILE, "%s",
          "a truncated image was accepted");
    CHECK(lowbit_c_optimizer_load_from_memory(again, NULL, size) == LOWBIT_C_INVALID_ARGUMENT, "%s",
          "a NULL image was accepted");
    uint64_t after_size = 0;
    uint8_t* after = image_of(again, &after_size);
    CHECK(after_size == before_size && memcmp(before, after, before_size) == 0, "a refused load changed the state");
    free(bad);
    free(before);
    free(after);
    lowbit_c_optimizer_destroy(again);
  }

  /* another composition's image: refused, naming what differs */
  lowbit_c_optimizer* lion = int8_states_over("lion", 1e-4f, 0.99f, &tw2);
  if (lion) {
    CHECK(lowbit_c_optimizer_load_from_memory(lion, image, size) == LOWBIT_C_INVALID_ARGUMENT, "%s",
          "an adamw image loaded into lion");
    CHECK(strstr(lowbit_c_last_error(), "rule adamw in file") != NULL, "message: %s", lowbit_c_last_error());
    lowbit_c_optimizer_destroy(lion);
  }
  free(image);
  lowbit_c_optimizer_destroy(opt);
}

int main(void) {
  CHECK(lowbit_c_abi_version() == LOWBIT_C_ABI_VERSION, "ABI %d", lowbit_c_abi_version());
  CHECK(strstr(lowbit_c_optimizer_compositions(), "lion/int8/int8/host") != NULL, "%s", lowbit_c_optimizer_compositions());
  test_sizes();
  test_int8_roundtrip();
  test_nf4_roundtrip();
  test_errors();
  test_optimizer_steps();
  test_state_image();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("test_c_api: all checks passed\n");
  return 0;
}
