// lowbit/io/io.hpp
// Umbrella for lowbit's host I/O layer: the safetensors reader and writer,
// bitsandbytes-compatible save/load of quantized weights and of optimizer
// states, and the DLPack adapter. Host only (mmap, POSIX file calls,
// nlohmann/json); not part of lowbit.cuh.
#pragma once

#include "bnb_quant_state.hpp"
#include "dlpack.hpp"
#include "optimizer_state.hpp"
#include "safetensors.hpp"
