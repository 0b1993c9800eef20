// lowbit/lowbit.hpp
// Umbrella header for host code: core types, formats, CPU kernels,
// optimizers and I/O (safetensors, bitsandbytes keys, DLPack).
// Compiles with any C++17 compiler; CUDA code lives in lowbit/lowbit.cuh.
#pragma once

#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/view.hpp"
#include "cpu/dequant_gemm.hpp"
#include "cpu/dequantize_rows.hpp"
#include "cpu/gemm.hpp"
#include "cpu/parallel.hpp"
#include "cpu/quantize.hpp"
#include "formats/block_codec.hpp"
#include "formats/codebooks.hpp"
#include "formats/dynamic_map.hpp"
#include "formats/format.hpp"
#include "formats/layout.hpp"
#include "formats/nested_scales.hpp"
#include "formats/quantized_view.hpp"
#include "formats/stochastic_rounding.hpp"
#include "core/reduce.hpp"
#include "core/rng.hpp"
#include "io/io.hpp"
#include "optim/optimizer.hpp"
