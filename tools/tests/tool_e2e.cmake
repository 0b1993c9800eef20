# End-to-end test of the `lowbit` tool, run by CTest as a CMake script:
# cmake -DLOWBIT=<tool> -DCHECK=<lowbit_tool_check> -DWORK_DIR=<dir> -P tool_e2e.cmake
# demo writes a random bf16 model; quantize (nf4 + double quant, then fp4 /
# int4 / int8 variants with --include/--exclude), inspect, dequantize, and
# lowbit_tool_check verifies every element against the format's error bound
# and every unquantized tensor bit for bit. Then malformed input, a missing
# file and bad flags must each exit non-zero with a message on stderr.
foreach(v LOWBIT CHECK WORK_DIR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "tool_e2e.cmake needs -D${v}=...")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

# run(<expect: OK|FAIL> <stdout-regex or ""> <stderr-regex or ""> cmd args...)
function(run expect out_re err_re)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  string(REPLACE ";" " " shown "${ARGN}")
  if(expect STREQUAL "OK" AND NOT rc EQUAL 0)
    message(FATAL_ERROR "'${shown}' failed (${rc}):\n${out}\n${err}")
  endif()
  if(expect STREQUAL "FAIL")
    if(rc EQUAL 0)
      message(FATAL_ERROR "'${shown}' should have failed:\n${out}")
    endif()
    if(err STREQUAL "")
      message(FATAL_ERROR "'${shown}' failed (${rc}) without a message on stderr")
    endif()
  endif()
  if(NOT out_re STREQUAL "" AND NOT out MATCHES "${out_re}")
    message(FATAL_ERROR "'${shown}' stdout does not match '${out_re}':\n${out}")
  endif()
  if(NOT err_re STREQUAL "" AND NOT err MATCHES "${err_re}")
    message(FATAL_ERROR "'${shown}' stderr does not match '${err_re}':\n${err}")
  endif()
  message(STATUS "ok: ${shown}")
endfunction()

set(model ${WORK_DIR}/lowbit-demo.safetensors)
run(OK "mean rel.err" "" ${LOWBIT} demo ${WORK_DIR})
run(OK "usage: lowbit quantize" "" ${LOWBIT} quantize --help)
run(OK "usage: lowbit" "" ${LOWBIT} --help)

# NF4 + double quantization, the default selection (2-D, not embed/norm/lm_head).
run(OK "\\[1/14\\] model.layers.0.self_attn.q_proj.weight 256x256 nf4 bs64 \\+dq" ""
    ${LOWBIT} quantize ${model} ${WORK_DIR}/nf4.safetensors --format nf4 --double-quant)
run(OK "model.layers.1.mlp.down_proj.weight +nf4 bs64 \\+dq \\(bfloat16\\) +\\[256, 688\\]" ""
    ${LOWBIT} inspect ${WORK_DIR}/nf4.safetensors)
run(OK "dequantized 14 weights" "" ${LOWBIT} dequantize ${WORK_DIR}/nf4.safetensors ${WORK_DIR}/nf4-deq.safetensors)
run(OK "14 quantized weights checked" "" ${CHECK} ${model} ${WORK_DIR}/nf4.safetensors ${WORK_DIR}/nf4-deq.safetensors)

# Other formats, block sizes and the selection flags.
run(OK "\\[1/2\\] model.layers.0.mlp.gate_proj.weight" ""
    ${LOWBIT} quantize ${model} ${WORK_DIR}/fp4.safetensors --format fp4 --blocksize 128 --include "gate_proj")
run(OK "dequantized 2 weights" ""
    ${LOWBIT} dequantize ${WORK_DIR}/fp4.safetensors ${WORK_DIR}/fp4-deq.safetensors)
run(OK "2 quantized weights checked" "" ${CHECK} ${model} ${WORK_DIR}/fp4.safetensors ${WORK_DIR}/fp4-deq.safetensors)
run(OK "quantized 10 tensors" "" ${LOWBIT} quantize ${model} ${WORK_DIR}/int4.safetensors --format int4
    --exclude "mlp\\.(up|down)" --blocksize=256 --double-quant)
run(OK "" "" ${LOWBIT} dequantize ${WORK_DIR}/int4.safetensors ${WORK_DIR}/int4-deq.safetensors)
run(OK "10 quantized weights" "" ${CHECK} ${model} ${WORK_DIR}/int4.safetensors ${WORK_DIR}/int4-deq.safetensors)
run(OK "quantized 21 tensors" "" ${LOWBIT} quantize ${model} ${WORK_DIR}/int8.safetensors --format int8
    --include "weight$")
run(OK "int8 bs64" "" ${LOWBIT} inspect ${WORK_DIR}/int8.safetensors)
run(OK "" "" ${LOWBIT} dequantize ${WORK_DIR}/int8.safetensors ${WORK_DIR}/int8-deq.safetensors --dtype bf16)
run(OK "21 quantized weights" "" ${CHECK} ${model} ${WORK_DIR}/int8.safetensors ${WORK_DIR}/int8-deq.safetensors)
run(OK "" "" ${LOWBIT} dequantize ${WORK_DIR}/nf4.safetensors ${WORK_DIR}/nf4-f32.safetensors --dtype fp32)
run(OK "F32 +\\[256, 256\\]" "" ${LOWBIT} inspect ${WORK_DIR}/nf4-f32.safetensors)

# Failures: malformed file, missing file, bad flags; each exits non-zero with a message.
file(WRITE ${WORK_DIR}/bad.safetensors "this is not a safetensors file")
run(FAIL "" "malformed file" ${LOWBIT} inspect ${WORK_DIR}/bad.safetensors)
run(FAIL "" "malformed file" ${LOWBIT} quantize ${WORK_DIR}/bad.safetensors ${WORK_DIR}/x.safetensors --format nf4)
run(FAIL "" "cannot open" ${LOWBIT} inspect ${WORK_DIR}/missing.safetensors)
run(FAIL "" "nf5" ${LOWBIT} quantize ${model} ${WORK_DIR}/x.safetensors --format nf5)
run(FAIL "" "--bogus" ${LOWBIT} quantize ${model} ${WORK_DIR}/x.safetensors --format nf4 --bogus)
run(FAIL "" "--blocksize 48" ${LOWBIT} quantize ${model} ${WORK_DIR}/x.safetensors --format nf4 --blocksize 48)
run(FAIL "" "--format is required" ${LOWBIT} quantize ${model} ${WORK_DIR}/x.safetensors)
run(FAIL "" "--dtype" ${LOWBIT} dequantize ${WORK_DIR}/nf4.safetensors ${WORK_DIR}/x.safetensors --dtype int3)
run(FAIL "" "unknown command" ${LOWBIT} frobnicate)
run(FAIL "" "usage" ${LOWBIT})
run(FAIL "" "cannot create" ${LOWBIT} quantize ${model} ${WORK_DIR}/no/such/dir/x.safetensors --format nf4)
if(EXISTS ${WORK_DIR}/x.safetensors)
  message(FATAL_ERROR "a failed command left ${WORK_DIR}/x.safetensors behind")
endif()
message(STATUS "tool end-to-end: all checks passed")
