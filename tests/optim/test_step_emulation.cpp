// The CPU step's vectorized tile code (optim/cpu_step.hpp) against a scalar
// emulation of the CUDA kernel (optim/cuda_step.cuh): the same shared
// host/device functions, called in the kernel's order, element by element and
// block by block (decode with the stored block scale, Rule::apply, clamp,
// absmax, stable-scale decision, snap, encode with the Philox bits of element
// i, pack). Every stored byte must agree: codes, float32 scales, nested scale
// codes and parameters, dense values. This is the CPU-side evidence for the
// CPU/GPU bit identity that tests/gpu/test_optimizer_gpu.cu checks on a
// device; it runs everywhere, so a change to either side's arithmetic that
// the other does not share shows up here first.
#include <doctest/doctest.h>

#include <lowbit/optim/optimizer.hpp>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

using namespace lowbit;
using namespace lowbit::optim;

namespace {

const float* nested_map() { return signed_dynamic_map().data(); }

// A storage and the memory behind it (copyable: copies the bytes).
struct owned_storage {
  storage_kind kind = storage_kind::none;
  int64_t n = 0;
  std::vector<uint8_t> dense;          // f32 / bf16 values
  std::shared_ptr<quantized_tensor> q;  // blockwise
  format_tables tables{};

  owned_storage clone() const {
    owned_storage c = *this;
    if (q) c.q = std::make_shared<quantized_tensor>(*q);
    return c;
  }
  storage_view view() {
    storage_view s;
    if (kind == storage_kind::none) return s;
    if (kind == storage_kind::blockwise) return blockwise_storage(q->view(), "test storage");
    s.kind = kind;
    s.n = n;
    s.data = dense.data();
    return s;
  }
  std::vector<uint8_t> bytes() const {
    if (kind != storage_kind::blockwise) return dense;
    std::vector<uint8_t> out(q->codes);
    auto add = [&](const void* p, size_t len) {
      const uint8_t* b = static_cast<const uint8_t*>(p);
      out.insert(out.end(), b, b + len);
    };
    if (q->layout.nested) {
      add(q->absmax_codes.data(), q->absmax_codes.size());
      add(q->nested_absmax.data(), q->nested_absmax.size() * 4);
      add(&q->nested_offset, 4);
    } else {
      add(q->absmax.data(), q->absmax.size() * 4);
    }
    return out;
  }
};

struct storage_spec {
  storage_kind kind;
  format fmt;
  int block;
  bool nested;
};

owned_storage make_storage(const storage_spec& s, int64_t n, const std::vector<float>& values) {
  owned_storage o;
  o.kind = s.kind;
  o.n = n;
  if (s.kind == storage_kind::none) return o;
  if (s.kind == storage_kind::blockwise) {
    o.q = std::make_shared<quantized_tensor>(make_layout(s.fmt, n, s.block, s.nested));
    cpu::quantize(make_flat_view(values.data(), n), o.q->view());
    o.tables = make_format_tables(s.fmt);
    return o;
  }
  const size_t width = s.kind == storage_kind::f32 ? 4 : 2;
  o.dense.resize(size_t(n) * width);
  for (int64_t i = 0; i < n; ++i) store_dense(s.kind, o.dense.data(), i, values[size_t(i)], false, 0);
  return o;
}

std::vector<float> normal(int64_t n, unsigned seed, float sd, bool absolute = false) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = absolute ? std::fabs(d(g)) : d(g);
  return v;
}

// ---- the emulation: cuda_step.cuh's fused_step_kernel, one element at a time ----

float load_element(const storage_view& st, const format_tables& tab, int64_t i, float* scale_out = nullptr) {
  if (st.kind == storage_kind::none) return 0.0f;
  if (!st.is_blockwise()) return load_dense(st.kind, st.data, i);
  const float scale = stored_block_scale(st.q, i / st.q.layout.block_size, nested_map());
  if (scale_out) *scale_out = scale;
  return mul_rn(tab.decode.value[load_code(st.q.codes, i, is_4bit(st.q.layout.fmt))], scale);
}

void encode_all(const storage_view& st, const format_tables& tab, const std::vector<float>& val, bool stochastic,
                const rng_stream& rng, float* absmax_out, bool keep, const std::vector<float>& old_scale,
                bool* renest) {
  if (st.kind == storage_kind::none) return;
  const int64_t n = st.n;
  auto bits = [&](int64_t i) { return stochastic ? rng.bits16(uint64_t(i)) : 0u; };
  if (!st.is_blockwise()) {
    for (int64_t i = 0; i < n; ++i)
      store_dense(st.kind, st.data, i, val[size_t(i)], stochastic && st.kind != storage_kind::f32, bits(i));
    return;
  }
  const quantized_view& q = st.q;
  const int bs = q.layout.block_size;
  const sorted_codebook& t = tab.sorted;
  std::vector<uint8_t> code(static_cast<size_t>(n));
  for (int64_t b = 0; b * bs < n; ++b) {
    const int64_t i0 = b * bs, i1 = std::min(n, i0 + bs);
    float m = 0.0f;
    for (int64_t i = i0; i < i1; ++i) m = absmax_step(m, val[size_t(i)]);
    if (keep) {
      const bool nested = q.layout.nested;
      const stable_scale sc = choose_stable_scale(old_scale[size_t(i0)], m, nested,
                                                  nested ? q.nested_absmax[b / nested_block_size] : 0.0f,
                                                  nested ? *q.nested_offset : 0.0f, nested_map());
      m = sc.value;
      if (sc.code >= 0) q.absmax_codes[b] = uint8_t(sc.code);
      if (sc.renest) *renest = true;
    }
    absmax_out[b] = m;
    const float inv = inverse_scale(m);
    for (int64_t i = i0; i < i1; ++i) {
      float u = mul_rn(val[size_t(i)], inv);
      if (keep) {
        const int lo = sorted_floor_index(u, t.value, t.steps);
        const float below = t.value[lo], above = t.value[lo + 1 < t.size ? lo + 1 : lo];
        const int d = snap_direction(u, below, above);
        u = d > 0 ? above : (d < 0 ? below : u);
      }
      code[size_t(i)] = encode_code(u, stochastic, bits(i), t);
    }
  }
  if (is_4bit(q.layout.fmt)) {
    const uint8_t zero = zero_code(q.layout.fmt);
    for (int64_t i = 0; i < n; i += 2)
      q.codes[i >> 1] = uint8_t((code[size_t(i)] << 4) | (i + 1 < n ? code[size_t(i + 1)] : zero));
  } else {
    for (int64_t i = 0; i < n; ++i) q.codes[i] = code[size_t(i)];
  }
}

template <class Rule>
void emulate_kernel(const fused_step_args& a, const typename Rule::consts& c) {
  const int64_t n = a.weight.n;
  const size_t count = static_cast<size_t>(n);
  std::vector<float> p(count), m(count), v(count), old_scale(count, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    p[size_t(i)] = load_element(a.weight, *a.weight_tables, i, &old_scale[size_t(i)]);
    m[size_t(i)] = a.state1_tables ? load_element(a.state1, *a.state1_tables, i) : load_element(a.state1, {}, i);
    v[size_t(i)] = a.state2_tables ? load_element(a.state2, *a.state2_tables, i) : load_element(a.state2, {}, i);
  }
  const storage_kind gk = a.grad_type == dtype::f32 ? storage_kind::f32 : storage_kind::bf16;
  for (int64_t i = 0; i < n; ++i) {
    const float g = mul_rn(load_dense(gk, a.grad, i), a.grad_scale);
    const float old = p[size_t(i)];
    float next = Rule::apply(old, g, m[size_t(i)], v[size_t(i)], c);
    if (a.max_update > 0.0f) {
      const float d = add_rn(next, -old);
      next = add_rn(old, d > a.max_update ? a.max_update : (d < -a.max_update ? -a.max_update : d));
    }
    p[size_t(i)] = next;
  }
  bool renest = false;
  const format_tables none{};
  encode_all(a.state1, a.state1_tables ? *a.state1_tables : none, m, a.state_stochastic,
             a.stream(rng_purpose::state1), a.state1.q.absmax, false, old_scale, &renest);
  encode_all(a.state2, a.state2_tables ? *a.state2_tables : none, v, a.state_stochastic,
             a.stream(rng_purpose::state2), a.state2.q.absmax, false, old_scale, &renest);
  const bool nested = a.weight.is_blockwise() && a.weight.q.layout.nested;
  const bool keep = a.stable_weight_scales && a.weight.is_blockwise();
  std::vector<float> scratch(nested ? size_t(a.weight.q.layout.n_blocks()) : 0);
  float* absmax_out = nested ? scratch.data() : a.weight.q.absmax;
  encode_all(a.weight, a.weight_tables ? *a.weight_tables : none, p, a.weight_stochastic,
             a.stream(rng_purpose::weight), absmax_out, keep, old_scale, &renest);
  // the CUDA executor runs the nested kernels here (their equality with the
  // CPU's nested quantizer is tests/gpu/test_quantize_gpu.cu's)
  if (nested && (!keep || renest)) cpu::quantize_nested_scales(scratch.data(), a.weight.q);
}

// ---- one comparison ---------------------------------------------------------

struct step_case {
  storage_spec weight, state1, state2;
  bool weight_stochastic, state_stochastic, stable;
  float lr, max_update;
  dtype grad_type;
};

// idle_half: the first half of the elements has zero gradient and zero
// states, so (without weight decay) those weights do not move, which is
// what the stable-scale snapping is for.
template <class Rule>
void compare(const step_case& sc, int64_t n, typename Rule::hparams h, bool idle_half = false) {
  h.lr = sc.lr;
  auto idle = [&](std::vector<float> v) {
    if (idle_half) std::fill(v.begin(), v.begin() + n / 2, 0.0f);
    return v;
  };
  owned_storage w = make_storage(sc.weight, n, normal(n, 1, 0.2f));
  owned_storage s1 = make_storage(sc.state1, n, idle(normal(n, 2, 0.01f)));
  owned_storage s2 = make_storage(Rule::n_states == 2 ? sc.state2 : storage_spec{storage_kind::none, format::int8, 0, false},
                                  n, idle(normal(n, 3, 1e-3f, true)));
  owned_storage w2 = w.clone(), s12 = s1.clone(), s22 = s2.clone();
  const std::vector<float> g32 = idle(normal(n, 4, 1.0f));
  std::vector<bf16> g16(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) g16[size_t(i)] = to_bf16(g32[size_t(i)]);
  for (int step = 1; step <= 2; ++step) {
    auto args = [&](owned_storage& ww, owned_storage& a1, owned_storage& a2) {
      fused_step_args a;
      a.weight = ww.view();
      a.state1 = a1.view();
      a.state2 = a2.view();
      a.weight_tables = ww.kind == storage_kind::blockwise ? &ww.tables : nullptr;
      a.state1_tables = a1.kind == storage_kind::blockwise ? &a1.tables : nullptr;
      a.state2_tables = a2.kind == storage_kind::blockwise ? &a2.tables : nullptr;
      a.grad = sc.grad_type == dtype::f32 ? static_cast<const void*>(g32.data()) : g16.data();
      a.grad_type = sc.grad_type;
      a.grad_scale = 0.75f;
      a.max_update = sc.max_update;
      a.weight_stochastic = sc.weight_stochastic;
      a.state_stochastic = sc.state_stochastic;
      a.stable_weight_scales = sc.stable;
      a.seed = 99;
      a.tensor_id = 3;
      a.step = uint32_t(step);
      return a;
    };
    const typename Rule::consts c = Rule::make_consts(h, step);
    cpu_fused_step<Rule>(args(w, s1, s2), c);
    emulate_kernel<Rule>(args(w2, s12, s22), c);
    CHECK(w.bytes() == w2.bytes());
    CHECK(s1.bytes() == s12.bytes());
    CHECK(s2.bytes() == s22.bytes());
  }
}

constexpr storage_kind F32 = storage_kind::f32, BF16 = storage_kind::bf16, BW = storage_kind::blockwise;

const storage_spec weight_specs[] = {
    {F32, format::int8, 0, false},      {BF16, format::int8, 0, false},    {BW, format::int8, 256, false},
    {BW, format::nf4, 64, true},        {BW, format::nf4, 64, false},      {BW, format::fp4, 64, true},
    {BW, format::int4, 128, false},
};

struct state_pair {
  storage_spec m, v;
};
const state_pair state_specs[] = {
    {{F32, format::int8, 0, false}, {F32, format::int8, 0, false}},
    {{BF16, format::int8, 0, false}, {BF16, format::int8, 0, false}},
    {{BW, format::dynamic8, 256, false}, {BW, format::udynamic8, 256, false}},
    {{BW, format::dynamic4, 128, false}, {BW, format::ulinear4, 128, false}},
};

template <class Rule>
void compare_all(int64_t n, const typename Rule::hparams& h) {
  for (const storage_spec& w : weight_specs)
    for (const state_pair& s : state_specs)
      for (int variant = 0; variant < 3; ++variant) {
        // 0: stochastic everything; 1: stable scales (blockwise weights) and
        // a clamp; 2: nearest rounding, bf16 gradients, large lr
        const bool blockwise = w.kind == BW;
        if (variant == 1 && !blockwise) continue;
        step_case sc{w, s.m, s.v, variant != 2, variant != 2, variant == 1, variant == 2 ? 3e-2f : 2e-3f,
                     variant == 1 ? 1.5e-3f : 0.0f, variant == 2 ? dtype::bf16 : dtype::f32};
        CAPTURE(int(w.kind));
        CAPTURE(int(w.fmt));
        CAPTURE(w.nested);
        CAPTURE(int(s.m.kind));
        CAPTURE(int(s.m.fmt));
        CAPTURE(variant);
        compare<Rule>(sc, n, h);
      }
}

}  // namespace

TEST_CASE("CPU step equals the scalar emulation of the CUDA kernel: Lion") {
  lion::hparams h;
  h.weight_decay = 0.1f;
  compare_all<lion>(20001, h);
}

TEST_CASE("CPU step equals the scalar emulation of the CUDA kernel: AdamW") {
  compare_all<adamw>(20001, adamw::hparams{});
}

TEST_CASE("CPU step equals the emulation when stable scales must re-quantize a nested group") {
  // lr far above the weights: blocks outgrow every code of their group
  step_case sc{{BW, format::nf4, 64, true}, {BW, format::dynamic8, 256, false}, {}, true, true, true, 0.5f, 0.0f,
               dtype::f32};
  compare<lion>(sc, 9001, lion::hparams{});
}

TEST_CASE("CPU step equals the emulation where stable scales snap unmoved weights") {
  for (const storage_spec& w : weight_specs) {
    if (w.kind != BW) continue;
    CAPTURE(int(w.fmt));
    CAPTURE(w.nested);
    step_case sc{w, {BW, format::dynamic8, 256, false}, {}, true, true, true, 2e-3f, 0.0f, dtype::f32};
    compare<lion>(sc, 20001, lion::hparams{}, true);  // no weight decay: idle weights stay put
  }
}
