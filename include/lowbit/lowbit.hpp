// lowbit/lowbit.hpp
// Umbrella header for host code: core types, formats, CPU kernels and I/O.
// Compiles with any C++17 compiler; CUDA code lives in lowbit/lowbit.cuh.
#pragma once

#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/view.hpp"
#include "cpu/parallel.hpp"
#include "cpu/quantize.hpp"
#include "formats/block_codec.hpp"
#include "formats/codebooks.hpp"
#include "formats/dynamic_map.hpp"
#include "formats/format.hpp"
#include "formats/layout.hpp"
#include "formats/nested_scales.hpp"
#include "formats/quantized_view.hpp"
