# Test of the allocation dry run (run with cmake -P): llama_train_emulated
# trains a few steps of a small model on the CUDA path under the CPU
# emulator twice per configuration, once computing everything and once with
# LOWBIT_EMULATOR_SKIP_COMPUTE=1 (kernels and cuBLAS GEMMs skipped). The
# device allocations of the trainer must not depend on what the kernels
# compute, so the fake runtime's exact peak of device memory in use must be
# the same in both runs, byte for byte; and the trainer's own peak, sampled
# through cudaMemGetInfo at a few points of each step, can miss a peak
# between samples but never exceed the exact one. This is what makes the
# dry run's figure for shapes too large to compute (docs/GPU-SESSION.md,
# "Device memory without a GPU") the figure of the real run's allocations.
cmake_minimum_required(VERSION 3.24)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
get_filename_component(DATA_DIR "${CMAKE_CURRENT_LIST_DIR}/../../../tests/data/llama" ABSOLUTE)
set(SMALL --config ${DATA_DIR}/tiny_gqa/config.json --device cuda --batch 2 --seq 32 --steps 2 --warmup 1
          --eval-every 0 --sample-tokens 0)

# run(name, env, args...): sets PEAK (the fake runtime's exact peak, bytes)
# and SAMPLED (the trainer's summary figure, MiB).
function(run name env)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env ${env} ${TRAIN} ${ARGN} WORKING_DIRECTORY ${WORK_DIR}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${name}: exit ${rc}\n${out}\n${err}")
  endif()
  if(NOT err MATCHES "peak device memory in use [0-9.]+ MiB \\(([0-9]+) bytes")
    message(FATAL_ERROR "${name}: no peak report from the fake runtime on stderr:\n${err}")
  endif()
  set(PEAK ${CMAKE_MATCH_1} PARENT_SCOPE)
  if(NOT out MATCHES "peak device memory ([0-9.]+) MiB")
    message(FATAL_ERROR "${name}: the trainer printed no peak device memory:\n${out}")
  endif()
  set(SAMPLED ${CMAKE_MATCH_1} PARENT_SCOPE)
endfunction()

set(configs
    "qft"
    "qft --checkpointing --fused-update --clip 0 --grad-dtype bf16"
    "bf16-adamw8 --fused-update --clip 0"
    "paged-adamw8")
foreach(config IN LISTS configs)
  separate_arguments(args UNIX_COMMAND "--mode ${config}")
  run("${config} (computed)" LOWBIT_EMULATOR_MEMORY_REPORT=1 ${SMALL} ${args})
  set(computed ${PEAK})
  set(sampled ${SAMPLED})
  run("${config} (dry run)" LOWBIT_EMULATOR_SKIP_COMPUTE=1 ${SMALL} ${args})
  if(NOT PEAK EQUAL computed)
    message(FATAL_ERROR "${config}: the dry run's peak (${PEAK} bytes) differs from the computed run's (${computed})")
  endif()
  if(computed LESS 100000)
    message(FATAL_ERROR "${config}: a peak of ${computed} bytes cannot hold the model's weights")
  endif()
  # MiB printed with one decimal: allow its rounding.
  math(EXPR exact_tenths_mib "(${computed} * 10 + 1048575) / 1048576")
  string(REPLACE "." "" sampled_tenths "${sampled}")
  if(sampled_tenths GREATER exact_tenths_mib)
    message(FATAL_ERROR "${config}: the trainer's sampled peak (${sampled} MiB) exceeds the exact one (${computed} bytes)")
  endif()
  message(STATUS "${config}: peak ${computed} bytes in both runs; the trainer sampled ${sampled} MiB")
endforeach()
