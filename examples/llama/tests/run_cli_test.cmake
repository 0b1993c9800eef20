# End-to-end test of the llama_train command line (run with cmake -P):
# --help, a short run with a JSONL log and a checkpoint, an interrupted run
# resumed to the same step (the checkpoints must be byte-identical),
# gradient accumulation, an export as a Hugging Face checkpoint and a start
# from it, a start from a Hugging Face checkpoint, and clear errors for bad
# input.
cmake_minimum_required(VERSION 3.24)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
get_filename_component(DATA_DIR "${CMAKE_CURRENT_LIST_DIR}/../../../tests/data/llama" ABSOLUTE)
set(SMALL --config ${DATA_DIR}/tiny_gqa/config.json --batch 4 --seq 32 --eval-every 5 --eval-batches 2
          --sample-tokens 20 --warmup 2)

function(run_ok name)
  execute_process(COMMAND ${TRAIN} ${ARGN} WORKING_DIRECTORY ${WORK_DIR}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${name}: exit ${rc}\n${out}\n${err}")
  endif()
  set(OUT "${out}" PARENT_SCOPE)
  set(ERR "${err}" PARENT_SCOPE)
endfunction()

# Fails unless the run fails with `expect` on stderr before training: no
# step's progress line (errors of the command line and of output targets
# must not wait for the end of a run).
function(run_fails name expect)
  execute_process(COMMAND ${TRAIN} ${ARGN} WORKING_DIRECTORY ${WORK_DIR}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0)
    message(FATAL_ERROR "${name}: expected a failure, got exit 0\n${out}")
  endif()
  string(FIND "${err}" "${expect}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "${name}: stderr lacks '${expect}':\n${err}")
  endif()
  string(REGEX MATCH "step +[0-9]+/" progress "${out}")
  if(progress)
    message(FATAL_ERROR "${name}: failed only after training:\n${out}\n${err}")
  endif()
endfunction()

# Fails unless `text` contains every one of the remaining arguments; `what`
# names the text in the message.
function(require_contains what text)
  foreach(want ${ARGN})
    string(FIND "${text}" "${want}" pos)
    if(pos EQUAL -1)
      message(FATAL_ERROR "${what} lacks '${want}':\n${text}")
    endif()
  endforeach()
endfunction()

run_ok(help --help)
require_contains("--help" "${OUT}" "--fused-update" "--grad-dtype" "--attention-chunk-mib" "--profile" "--grad-accum")

# Uninterrupted: 10 steps, log and checkpoint.
run_ok(full --mode qft --steps 10 ${SMALL} --log full.jsonl --save full.safetensors)
require_contains("output" "${OUT}" "memory (qft)" "betas 0.9 0.95," "optimizer states" "gradients (f32)"
                 "validation loss" "sample (temperature" "tok/s")
file(STRINGS ${WORK_DIR}/full.jsonl lines REGEX "\"loss\"")
list(LENGTH lines n)
if(NOT n EQUAL 10)
  message(FATAL_ERROR "full.jsonl has ${n} step records, expected 10")
endif()

# --profile: the phase table after the summary line, and the phases in the
# JSONL summary record (the first step left out by --timing-warmup).
run_ok(profile --mode qft --steps 3 ${SMALL} --eval-every 0 --sample-tokens 0 --profile --timing-warmup 1
       --log profile.jsonl)
require_contains("--profile output" "${OUT}" "where a step's time goes (--profile, 2 steps counted)"
                 "layers forward" "attention backward" "optimizer" "host clock:")
file(STRINGS ${WORK_DIR}/profile.jsonl summary REGEX "\"summary\":true")
require_contains("--profile summary record" "${summary}" "\"profiled_steps\":2" "\"phase_ms_per_step\":{\"other\":"
                 "\"optimizer\":")

# Interrupted after 4 steps, resumed to 10: the same checkpoint, byte for byte.
run_ok(first_half --mode qft --steps 10 ${SMALL} --stop-after 4 --save resumed.safetensors)
run_ok(second_half --mode qft --steps 10 ${SMALL} --resume resumed.safetensors --save resumed.safetensors)
execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK_DIR}/full.safetensors ${WORK_DIR}/resumed.safetensors
                RESULT_VARIABLE same)
if(NOT same EQUAL 0)
  message(FATAL_ERROR "the resumed run's checkpoint differs from the uninterrupted run's")
endif()

# Gradient accumulation: 2 micro-batches of 2 sequences per step, the
# tokens of --batch 4 (128 per step); resuming the --batch 4 checkpoint
# with it takes as many tokens per step (no note), with --batch 2 alone
# half as many (a note on stderr).
run_ok(grad_accum --mode qft --steps 3 ${SMALL} --batch 2 --grad-accum 2 --log accum.jsonl)
require_contains("--grad-accum output" "${OUT}" "batch 2 x seq 32 x 2 micro-batches per step" "per micro-batch")
file(STRINGS ${WORK_DIR}/accum.jsonl accum_lines REGEX "\"step\":3,\"loss\"")
require_contains("--grad-accum log" "${accum_lines}" "\"tokens\":384,")
file(STRINGS ${WORK_DIR}/accum.jsonl accum_summary REGEX "\"summary\":true")
require_contains("--grad-accum summary record" "${accum_summary}" "\"batch\":2," "\"grad_accum\":2,")
run_ok(accum_resume --mode qft --steps 12 ${SMALL} --batch 2 --grad-accum 2 --resume full.safetensors --eval-every 0
       --sample-tokens 0)
string(FIND "${ERR}" "note: the checkpoint took" note_pos)
if(NOT note_pos EQUAL -1)
  message(FATAL_ERROR "resuming with the same tokens per step printed a note:\n${ERR}")
endif()
run_ok(batch_resume --mode qft --steps 12 ${SMALL} --batch 2 --resume full.safetensors --eval-every 0 --sample-tokens 0)
require_contains("resume with another batch (stderr)" "${ERR}"
                 "note: the checkpoint took 1280 tokens in 10 steps, not 64 per step")

# Export the trained model as a Hugging Face checkpoint (resuming at the
# last step: no step runs) and start a run from it.
run_ok(export --mode qft --steps 10 ${SMALL} --resume full.safetensors --export-hf exported --export-dtype f32
       --eval-every 0 --sample-tokens 0)
require_contains("--export-hf output" "${OUT}" "exported the model to exported (config.json, model.safetensors in f32)"
                 "mode qft: 0 steps in")
require_contains("--export-hf stderr" "${ERR}" "note: the checkpoint is at step 10, --steps is 10: nothing to train")
string(FIND "${OUT}" "final training loss" no_loss)
if(NOT no_loss EQUAL -1)
  message(FATAL_ERROR "a run of no steps reported a training loss:\n${OUT}")
endif()
foreach(f config.json model.safetensors)
  if(NOT EXISTS ${WORK_DIR}/exported/${f})
    message(FATAL_ERROR "--export-hf wrote no ${f}")
  endif()
endforeach()
file(READ ${WORK_DIR}/exported/config.json exported_config)
require_contains("exported config.json" "${exported_config}" "\"torch_dtype\": \"float32\"" "LlamaForCausalLM")
run_ok(init_from_export --mode fp32-adamw --steps 2 --init exported --batch 4 --seq 32 --eval-every 0 --sample-tokens 0)
# NF4 layers kept as bitsandbytes 4-bit, and a start from them
run_ok(export_4bit --mode nf4 --steps 2 ${SMALL} --export-hf exported4 --export-4bit --eval-every 0 --sample-tokens 0)
require_contains("--export-4bit output" "${OUT}" "with the layers' weights in bitsandbytes 4-bit")
file(READ ${WORK_DIR}/exported4/config.json exported4_config)
require_contains("--export-4bit config.json" "${exported4_config}" "\"quantization_config\"" "\"load_in_4bit\": true")
run_ok(init_from_export4 --mode nf4 --steps 2 --init exported4 --batch 4 --seq 32 --eval-every 0 --sample-tokens 0)

# Start from a Hugging Face checkpoint (bf16, sharded), fused update.
run_ok(hf_init --mode nf4 --steps 3 --init ${DATA_DIR}/tiny_gqa_bf16_sharded --batch 4 --seq 32 --eval-every 0
       --sample-tokens 0 --fused-update --clip 0)

run_fails(bad_mode "unknown mode 'nonsense'" --mode nonsense)
run_fails(bad_number "--steps expects an integer" --steps ten)
run_fails(bad_beta2 "--beta2 must be in [0, 1)" --beta2 1)
run_fails(fused_clip "pass --clip 0" --fused-update)
run_fails(gpu_mode "runs on the trainer's CUDA path only" --device cpu --mode paged-adamw8)
run_fails(bad_device "--device must be auto, cpu or cuda" --device tpu)
run_fails(bad_attention_chunk "--attention-chunk-mib must be between 1 and 1048576, got 0" --attention-chunk-mib 0)
run_fails(zero_grad_accum "--grad-accum must be" --grad-accum 0)
run_fails(fused_grad_accum "--grad-accum 2 needs a whole gradient buffer" --fused-update --clip 0 --grad-accum 2)
run_fails(export_4bit_int8 "mode 'qft' has none" --mode qft --export-hf unused --export-4bit)
run_fails(bad_export_dtype "--export-dtype must be f32, bf16 or f16, got 'f8'" --export-dtype f8)
run_fails(bad_grad_dtype "--grad-dtype must be f32 or bf16, got 'f16'" --grad-dtype f16)
run_fails(cpu_bf16_grads "--grad-dtype bf16 needs the CUDA backend" --device cpu --mode qft --grad-dtype bf16 ${SMALL})
run_fails(mode_mismatch "trained in mode 'qft', this run uses mode 'fp32-adamw'" --mode fp32-adamw --steps 10 ${SMALL}
          --resume full.safetensors)
run_fails(missing_data "cannot open corpus" --data ${WORK_DIR}/nope.txt)
run_fails(bad_rounding_seed "--rounding-seed expects an integer from 0 to 18446744073709551615, got '-1'"
          --rounding-seed -1)
run_fails(negative_seed "--seed expects an integer from 0 to" --seed -1)
run_fails(seed_mismatch "checkpoint 'full.safetensors' was trained with --seed 1337, this run uses 5" --mode qft
          --steps 10 ${SMALL} --seed 5 --resume full.safetensors)
run_fails(resume_other_preset "is for another model than --preset llama2-7b: hidden_size 64 in the checkpoint, 4096"
          --mode qft --steps 12 --preset llama2-7b --resume full.safetensors)
run_fails(resume_and_init "--init and --resume both give the weights" --mode qft --steps 12 --resume full.safetensors
          --init exported)
run_fails(preset_and_config "--preset and --config both give the model config" ${SMALL} --preset tiny)
run_fails(huge_batch "tokens per step is more than 2^31" --batch 1152921504606846976)
run_fails(zero_lr "--lr must be > 0, got 0" --lr 0)
run_fails(negative_stop "--stop-after must be >= 0" --stop-after -5)
run_fails(save_every_alone "--save-every needs --save FILE" --save-every 5)
run_fails(cpu_logits_chunk "--logits-chunk-mib applies to the CUDA path only" --device cpu ${SMALL}
          --logits-chunk-mib 8)
run_fails(cpu_attention_chunk "--attention-chunk-mib applies to the CUDA path only" --device cpu ${SMALL}
          --attention-chunk-mib 8)
run_fails(cpu_sync_checks "--sync-gradient-checks applies to the CUDA path only" --device cpu ${SMALL}
          --fused-update --clip 0 --sync-gradient-checks)
run_fails(sync_checks_two_pass "--sync-gradient-checks applies to --fused-update" --sync-gradient-checks)
# output targets that cannot be written are refused before the run
run_fails(save_no_dir "--save '${WORK_DIR}/nope/x.safetensors': the directory '${WORK_DIR}/nope' does not exist"
          ${SMALL} --steps 50 --save ${WORK_DIR}/nope/x.safetensors)
run_fails(save_is_dir "is a directory; name the checkpoint file" ${SMALL} --steps 50 --save exported)
file(WRITE ${WORK_DIR}/a_file "x")
run_fails(export_into_file "export: cannot create the directory 'a_file'" ${SMALL} --steps 50 --export-hf a_file)
run_fails(data_dir "corpus '${WORK_DIR}' is a directory" ${SMALL} --data ${WORK_DIR})
# config.json values of the wrong type or range are named, not wrapped
file(READ ${DATA_DIR}/tiny_gqa/config.json gqa_config)
string(REPLACE "\"vocab_size\": 256" "\"vocab_size\": 4294967552" wrapped_config "${gqa_config}")
file(WRITE ${WORK_DIR}/vocab_wrap.json "${wrapped_config}")
run_fails(config_int_range "'vocab_size' = 4294967552 is out of range" --config vocab_wrap.json)
string(REPLACE "\"tie_word_embeddings\": false" "\"tie_word_embeddings\": 1" tie_config "${gqa_config}")
file(WRITE ${WORK_DIR}/tie_number.json "${tie_config}")
run_fails(config_bool_type "'tie_word_embeddings' must be true or false, got number" --config tie_number.json)

# A diverging run: the skipped steps are numbered as in the log, and every
# log record stays valid JSON (NaN written as null).
run_ok(diverge --mode fp32-adamw --steps 4 ${SMALL} --lr 1e30 --eval-every 2 --log diverge.jsonl --sample-tokens 0)
require_contains("diverging run (stderr)" "${ERR}" "step 2: non-finite loss or gradient, update skipped")
file(STRINGS ${WORK_DIR}/diverge.jsonl diverge_lines)
foreach(line IN LISTS diverge_lines)
  string(JSON type ERROR_VARIABLE json_error TYPE "${line}")
  if(json_error)
    message(FATAL_ERROR "diverge.jsonl: a record is not JSON (${json_error}): ${line}")
  endif()
endforeach()
require_contains("diverge.jsonl" "${diverge_lines}" "{\"step\":2,\"loss\":null," "\"val_loss\":null")

# A pre-tokenized corpus (uint16 ids: "AB" is 0x4241 = 16961, "CD" 0x4443 = 17475) with the
# default byte tokenizer: no sample is decoded from ids that are not bytes.
string(REPLACE "\"vocab_size\": 256" "\"vocab_size\": 17500" wide_config "${gqa_config}")
file(WRITE ${WORK_DIR}/wide_vocab.json "${wide_config}")
string(REPEAT "ABCD" 2000 id_text)
file(WRITE ${WORK_DIR}/ids.u16 "${id_text}")
run_ok(pretokenized --config wide_vocab.json --data ids.u16 --data-format u16 --steps 2 --batch 2 --seq 16
       --eval-every 0)
require_contains("pre-tokenized corpus output" "${OUT}" "no sample: the corpus is pre-tokenized")
run_fails(rounding_mismatch "trained with rounding seed 1337, this run uses 7" --mode qft --steps 10 ${SMALL}
          --rounding-seed 7 --resume full.safetensors)
message(STATUS "llama_train command line: all checks passed")
