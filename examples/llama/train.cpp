// examples/llama/train.cpp
// llama_train: trains a LLaMA model on the CPU or a CUDA GPU (--device) with
// every model state in the format its training mode names (see modes.hpp),
// using only lowbit's public headers. Run `llama_train --help` for the options. One step: draw the
// batch of this step, forward, backward (gradients into one buffer, or with
// --fused-update each layer's weights updated as soon as its gradients
// exist), global-norm clipping, optimizer update. Prints a memory table at
// the start, a progress line per --log-every steps, the validation loss per
// --eval-every steps, a generated sample at the end; writes every step to a
// JSONL log; saves and resumes checkpoints.
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <lowbit/lowbit.hpp>

#include "backend.hpp"
#include "checkpoint.hpp"
#include "session.hpp"
#include "config.hpp"
#include "dataset.hpp"
#include "hf_checkpoint.hpp"
#include "hf_export.hpp"
#include "init.hpp"
#include "model.hpp"
#include "modes.hpp"
#include "parameters.hpp"
#include "tokenizer.hpp"

#ifndef LLAMA_DEFAULT_DATA
#define LLAMA_DEFAULT_DATA "examples/llama/data/tinyshakespeare.txt"
#endif

namespace {

using namespace llama;

struct options {
  std::string mode = "fp32-adamw";
  std::string preset = "tiny";
  bool preset_given = false;  // --preset on the command line (checked against a --resume checkpoint)
  std::string config_path, init_dir, resume_path, save_path, log_path;
  std::string export_dir, export_dtype = "bf16";  // --export-hf, --export-dtype
  bool export_4bit = false;                       // --export-4bit
  std::string data = LLAMA_DEFAULT_DATA, data_format = "text", tokenizer_spec = "byte";
  std::string device = "auto", gpu_activations = "auto", grad_dtype = "f32";
  int64_t steps = 600, batch = 16, seq = 128, grad_accum = 1;
  float lr = 0.0f, min_lr_ratio = 0.1f, weight_decay = 0.0f, clip = 1.0f, beta1 = 0.9f, beta2 = 0.95f;
  int64_t warmup = 30, eval_every = 100, eval_batches = 8, log_every = 10, save_every = 0, stop_after = -1;
  bool lr_given = false, stop_after_given = false;  // otherwise the mode's default, no stop
  uint64_t seed = 1337;
  uint64_t rounding_seed = 0;
  bool rounding_seed_given = false;  // otherwise the --seed
  bool checkpointing = false, fused_update = false, quiet = false;
  bool sync_gradient_checks = false;  // --sync-gradient-checks
  bool profile = false;               // --profile: time the phases of each step
  int64_t sample_tokens = 200;
  std::string prompt = "ROMEO:";
  float temperature = 0.8f;
  double peak_tflops = 989.4;  // MFU denominator: H100 SXM dense bf16 tensor-core peak
  int64_t timing_warmup = 0;   // first steps left out of the final tokens/s
  int64_t logits_chunk_mib = 64;
  int64_t attention_chunk_mib = 32;
  std::vector<std::string> cuda_only_flags;  // given options that only the CUDA backend uses
};

void print_help() {
  std::printf(
      "usage: llama_train [options]\n"
      "Trains a LLaMA model on the CPU or a CUDA GPU through lowbit's low-bit optimizers.\n\n"
      "device:\n"
      "  --device D            auto (default: cuda when built with CUDA and a GPU is present), cpu, cuda\n"
      "  --gpu-activations A   CUDA activation dtype: auto (bf16; f32 for float32-weight modes), bf16, f32\n"
      "                        (f32 only with float32 or quantized weights, bf16 only with bf16 or quantized)\n"
      "  --grad-dtype T        gradient buffer dtype: f32 (default) or bf16 (CUDA only, with bf16\n"
      "                        activations): half the gradient memory; every gradient is summed in\n"
      "                        float32 and rounded to bf16 once per step (a tied head's twice)\n"
      "  --logits-chunk-mib N  CUDA: the float32 logits are made in vocabulary chunks of at most N MiB\n"
      "                        (default 64), never whole; several chunks cost one more pass of head\n"
      "                        GEMMs (the backward recomputes them); N >= the whole logits: one chunk\n"
      "  --attention-chunk-mib N  CUDA: attention's float32 scores are made for as many sequences of the\n"
      "                        batch at a time as fit N MiB (default 32; at least one sequence)\n"
      "model:\n"
      "  --preset NAME         tiny (default), llama2-7b, llama3.2-1b, tinyllama-1.1b (random init)\n"
      "  --config FILE         Hugging Face config.json instead of a preset (random init)\n"
      "  --init DIR            start from a Hugging Face checkpoint (config.json + model.safetensors,\n"
      "                        sharded index, F32/BF16/F16 or bitsandbytes NF4 keys)\n"
      "  --checkpointing       activation checkpointing per layer (recompute in the backward)\n"
      "training:\n"
      "  --mode NAME           training mode (default fp32-adamw); see --list-modes\n"
      "  --steps N             optimizer steps (default 600)\n"
      "  --batch N, --seq N    sequences per step and their length (default 16 x 128)\n"
      "  --grad-accum K        gradient accumulation: each step runs K micro-batches of --batch\n"
      "                        sequences and updates once with their mean gradient (default 1): the\n"
      "                        data and update of --batch K*N at the activation memory of --batch N;\n"
      "                        needs the two-pass update (not --fused-update)\n"
      "  --lr X                peak learning rate (default per mode: AdamW 2e-3, Lion 1e-3)\n"
      "  --warmup N            linear warmup steps (default 30), then cosine to --min-lr-ratio (0.1)\n"
      "  --weight-decay X      decoupled weight decay on matrices (default 0)\n"
      "  --beta1 X --beta2 X   (default 0.9, 0.95; for Lion too: docs/RESULTS.md, \"Lion's beta2\")\n"
      "  --clip X              global gradient-norm clip, 0 = off (default 1.0)\n"
      "  --fused-update        update each layer as soon as its gradients exist (no full gradient\n"
      "                        buffer); global-norm clipping is then unavailable (needs --clip 0)\n"
      "  --sync-gradient-checks  CUDA, --fused-update: wait on the host for each tensor's NaN /\n"
      "                        infinity check, as before 2026-11-27, instead of letting the step\n"
      "                        kernel read it on the device (same results; for timing comparisons)\n"
      "  --seed N              data order, init and stochastic rounding (default 1337)\n"
      "  --rounding-seed N     stochastic rounding only (default: the --seed), to vary the rounding\n"
      "                        draws of a run while its data order and initial weights stay fixed\n"
      "data:\n"
      "  --data FILE           corpus (default: tinyshakespeare)\n"
      "  --data-format F       text (default), u16 or u32 (pre-tokenized little-endian ids)\n"
      "  --tokenizer T         byte (default) or a SentencePiece tokenizer.model\n"
      "output:\n"
      "  --log FILE            JSONL log of every step and evaluation\n"
      "  --log-every N         progress line every N steps (default 10)\n"
      "  --eval-every N        validation loss every N steps (default 100), over --eval-batches N (8)\n"
      "                        fixed held-out batches of a step's size (--batch x --grad-accum)\n"
      "  --save FILE           checkpoint at the end (and every --save-every N steps)\n"
      "  --resume FILE         continue from a checkpoint (same mode and model)\n"
      "  --export-hf DIR       at the end, write the model as a Hugging Face checkpoint (config.json +\n"
      "                        model.safetensors, quantized weights decoded) that transformers and\n"
      "                        --init load; --export-dtype bf16 (default), f16 or f32; --export-4bit\n"
      "                        (nf4 modes): the layers' NF4 weights as they are, in bitsandbytes' 4-bit\n"
      "                        keys, for transformers with bitsandbytes\n"
      "  --stop-after N        stop after step N (as if interrupted; for resume tests)\n"
      "  --sample-tokens N     tokens generated at the end (default 200), --prompt TEXT, --temperature X\n"
      "  --quiet               only the final summary\n"
      "  --timing-warmup N     leave the first N steps out of the final tokens/s (default 0)\n"
      "  --profile             time the phases of each step (forward, attention, head, recompute, backward,\n"
      "                        optimizer, ...; CUDA events on a GPU, which adds one host wait per step) and\n"
      "                        print where a step's time goes (also in the --log summary)\n"
      "  --peak-tflops X       GPU peak for the model FLOPs utilisation (default 989.4, H100 SXM bf16 dense)\n"
      "  --list-modes          list the training modes\n"
      "Threads: LOWBIT_NUM_THREADS (default: all cores).\n");
}

bool parse_args(int argc, char** argv, options& o) {
  auto need = [&](int& i) -> std::string {
    if (i + 1 >= argc) throw lowbit::error(lowbit::errc::invalid_argument, std::string(argv[i]) + " needs a value");
    return argv[++i];
  };
  auto to_int = [](const std::string& flag, const std::string& v) {
    size_t used = 0;
    long long x = 0;
    try {
      x = std::stoll(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || v.empty())
      throw lowbit::error(lowbit::errc::invalid_argument, flag + " expects an integer, got '" + v + "'");
    return int64_t(x);
  };
  auto to_u64 = [](const std::string& flag, const std::string& v) {
    size_t used = 0;
    unsigned long long x = 0;
    try {
      if (!v.empty() && v[0] != '-' && v[0] != '+') x = std::stoull(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || v.empty())
      throw lowbit::error(lowbit::errc::invalid_argument,
                          flag + " expects an integer from 0 to 18446744073709551615, got '" + v + "'");
    return uint64_t(x);
  };
  auto to_float = [](const std::string& flag, const std::string& v) {
    size_t used = 0;
    float x = 0;
    try {
      x = std::stof(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || v.empty() || !std::isfinite(x))
      throw lowbit::error(lowbit::errc::invalid_argument, flag + " expects a number, got '" + v + "'");
    return x;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      print_help();
      return false;
    } else if (a == "--list-modes") {
      for (const mode_info& m : training_modes())
        std::printf("  %-15s %s%s\n", m.name.c_str(), m.description.c_str(), m.gpu_only ? " [CUDA only]" : "");
      return false;
    } else if (a == "--mode") o.mode = need(i);
    else if (a == "--device") o.device = need(i);
    else if (a == "--peak-tflops") o.peak_tflops = to_float(a, need(i));
    else if (a == "--timing-warmup") o.timing_warmup = to_int(a, need(i));
    else if (a == "--gpu-activations") o.gpu_activations = need(i);
    else if (a == "--grad-dtype") o.grad_dtype = need(i);
    else if (a == "--logits-chunk-mib") {
      o.logits_chunk_mib = to_int(a, need(i));
      o.cuda_only_flags.push_back(a);
    } else if (a == "--attention-chunk-mib") {
      o.attention_chunk_mib = to_int(a, need(i));
      o.cuda_only_flags.push_back(a);
    }
    else if (a == "--preset") {
      o.preset = need(i);
      o.preset_given = true;
    }
    else if (a == "--config") o.config_path = need(i);
    else if (a == "--init") o.init_dir = need(i);
    else if (a == "--resume") o.resume_path = need(i);
    else if (a == "--save") o.save_path = need(i);
    else if (a == "--export-hf") o.export_dir = need(i);
    else if (a == "--export-dtype") o.export_dtype = need(i);
    else if (a == "--export-4bit") o.export_4bit = true;
    else if (a == "--log") o.log_path = need(i);
    else if (a == "--data") o.data = need(i);
    else if (a == "--data-format") o.data_format = need(i);
    else if (a == "--tokenizer") o.tokenizer_spec = need(i);
    else if (a == "--prompt") o.prompt = need(i);
    else if (a == "--steps") o.steps = to_int(a, need(i));
    else if (a == "--batch") o.batch = to_int(a, need(i));
    else if (a == "--seq") o.seq = to_int(a, need(i));
    else if (a == "--grad-accum") o.grad_accum = to_int(a, need(i));
    else if (a == "--warmup") o.warmup = to_int(a, need(i));
    else if (a == "--eval-every") o.eval_every = to_int(a, need(i));
    else if (a == "--eval-batches") o.eval_batches = to_int(a, need(i));
    else if (a == "--log-every") o.log_every = to_int(a, need(i));
    else if (a == "--save-every") o.save_every = to_int(a, need(i));
    else if (a == "--stop-after") {
      o.stop_after = to_int(a, need(i));
      o.stop_after_given = true;
    }
    else if (a == "--sample-tokens") o.sample_tokens = to_int(a, need(i));
    else if (a == "--seed") o.seed = to_u64(a, need(i));
    else if (a == "--rounding-seed") {
      o.rounding_seed = to_u64(a, need(i));
      o.rounding_seed_given = true;
    }
    else if (a == "--lr") {
      o.lr = to_float(a, need(i));
      o.lr_given = true;
    }
    else if (a == "--min-lr-ratio") o.min_lr_ratio = to_float(a, need(i));
    else if (a == "--weight-decay") o.weight_decay = to_float(a, need(i));
    else if (a == "--clip") o.clip = to_float(a, need(i));
    else if (a == "--beta1") o.beta1 = to_float(a, need(i));
    else if (a == "--beta2") o.beta2 = to_float(a, need(i));
    else if (a == "--temperature") o.temperature = to_float(a, need(i));
    else if (a == "--checkpointing") o.checkpointing = true;
    else if (a == "--fused-update") o.fused_update = true;
    else if (a == "--sync-gradient-checks") {
      o.sync_gradient_checks = true;
      o.cuda_only_flags.push_back(a);
    }
    else if (a == "--quiet") o.quiet = true;
    else if (a == "--profile") o.profile = true;
    else throw lowbit::error(lowbit::errc::invalid_argument, "unknown option '" + a + "' (try --help)");
  }
  auto positive = [](int64_t v, const char* flag) {
    lowbit::require(v > 0, lowbit::errc::invalid_argument, std::string(flag) + " must be > 0");
  };
  positive(o.steps, "--steps");
  positive(o.batch, "--batch");
  positive(o.seq, "--seq");
  positive(o.grad_accum, "--grad-accum");
  positive(o.eval_batches, "--eval-batches");
  positive(o.log_every, "--log-every");
  // Tokens per step: x and y hold that many ids, and the sessions size
  // their activations by batch x seq; refuse products that would not fit
  // (or overflow) before anything is allocated.
  const int64_t max_tokens = int64_t(1) << 31;
  lowbit::require(o.batch <= max_tokens / o.seq && o.batch * o.seq <= max_tokens / o.grad_accum,
                  lowbit::errc::invalid_argument,
                  "--batch " + std::to_string(o.batch) + " x --seq " + std::to_string(o.seq) + " x --grad-accum " +
                      std::to_string(o.grad_accum) + " tokens per step is more than 2^31");
  lowbit::require(!o.lr_given || o.lr > 0.0f, lowbit::errc::invalid_argument,
                  "--lr must be > 0, got " + std::to_string(o.lr));
  lowbit::require(o.timing_warmup >= 0, lowbit::errc::invalid_argument, "--timing-warmup must be >= 0");
  lowbit::require(!o.stop_after_given || o.stop_after >= 0, lowbit::errc::invalid_argument,
                  "--stop-after must be >= 0");
  lowbit::require(o.peak_tflops > 0.0, lowbit::errc::invalid_argument, "--peak-tflops must be > 0");
  lowbit::require(o.save_every == 0 || !o.save_path.empty(), lowbit::errc::invalid_argument,
                  "--save-every needs --save FILE (where to write the checkpoints)");
  lowbit::require(!o.sync_gradient_checks || o.fused_update, lowbit::errc::invalid_argument,
                  "--sync-gradient-checks applies to --fused-update (the two-pass update checks the whole "
                  "gradient buffer itself)");
  lowbit::require(o.resume_path.empty() || o.init_dir.empty(), lowbit::errc::invalid_argument,
                  "--init and --resume both give the weights; --resume alone continues the checkpoint's run");
  lowbit::require(o.warmup >= 0 && o.eval_every >= 0 && o.save_every >= 0 && o.sample_tokens >= 0,
                  lowbit::errc::invalid_argument, "--warmup, --eval-every, --save-every, --sample-tokens must be >= 0");
  lowbit::require(o.beta1 >= 0.0f && o.beta1 < 1.0f, lowbit::errc::invalid_argument, "--beta1 must be in [0, 1)");
  lowbit::require(o.beta2 >= 0.0f && o.beta2 < 1.0f, lowbit::errc::invalid_argument, "--beta2 must be in [0, 1)");
  lowbit::require(o.clip >= 0.0f, lowbit::errc::invalid_argument, "--clip must be >= 0");
  lowbit::require(o.min_lr_ratio >= 0.0f && o.min_lr_ratio <= 1.0f, lowbit::errc::invalid_argument,
                  "--min-lr-ratio must be in [0, 1]");
  lowbit::require(o.temperature > 0.0f, lowbit::errc::invalid_argument, "--temperature must be > 0");
  lowbit::require(!(o.fused_update && o.clip > 0.0f), lowbit::errc::invalid_argument,
                  "--fused-update updates each layer before the global gradient norm is known, so global-norm "
                  "clipping is unavailable; pass --clip 0 with it");
  parse_export_dtype(o.export_dtype);  // refused before any setup
  lowbit::require(!o.export_4bit || !o.export_dir.empty(), lowbit::errc::invalid_argument,
                  "--export-4bit applies to --export-hf DIR, which is missing");
  session_options session_checks;  // what the sessions refuse, refused before any setup
  session_checks.fused_update = o.fused_update;
  session_checks.grad_accum = o.grad_accum;
  check_session_options(session_checks);
  lowbit::require(o.config_path.empty() || o.init_dir.empty(), lowbit::errc::invalid_argument,
                  "--config and --init both give the model config; use one");
  lowbit::require(!o.preset_given || (o.config_path.empty() && o.init_dir.empty()), lowbit::errc::invalid_argument,
                  std::string("--preset and ") + (o.config_path.empty() ? "--init" : "--config") +
                      " both give the model config; use one");
  parse_grad_dtype(o.grad_dtype);  // f32 or bf16, else a clear error
  lowbit::require(o.logits_chunk_mib >= 1 && o.logits_chunk_mib <= (int64_t(1) << 20), lowbit::errc::invalid_argument,
                  "--logits-chunk-mib must be between 1 and 1048576, got " + std::to_string(o.logits_chunk_mib));
  lowbit::require(o.attention_chunk_mib >= 1 && o.attention_chunk_mib <= (int64_t(1) << 20),
                  lowbit::errc::invalid_argument,
                  "--attention-chunk-mib must be between 1 and 1048576, got " + std::to_string(o.attention_chunk_mib));
  return true;
}

// Warmup then cosine decay to min_lr_ratio * lr.
float lr_at(const options& o, float peak, int64_t step) {
  if (step < o.warmup) return peak * float(step + 1) / float(o.warmup + 1);
  const double t = o.steps > o.warmup ? double(step - o.warmup) / double(o.steps - o.warmup) : 1.0;
  const double cosine = 0.5 * (1.0 + std::cos(3.141592653589793 * std::min(1.0, t)));
  return float(peak * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine));
}

// A JSON number, or null where the value is not finite (JSON has no NaN);
// finite values print as a plain `os << v` does.
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string human_time(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return buf;
}

void print_memory_table(const mode_info& m, int64_t P, int64_t weight_bytes, int64_t state_bytes, int64_t grad_bytes,
                        int64_t act_bytes, const options& o) {
  const double mib = 1024.0 * 1024.0;
  const int64_t std_w = 4 * P, std_s = 8 * P, std_g = 4 * P;
  auto row = [&](const char* what, int64_t ours, int64_t standard) {
    std::printf("  %-22s %8.3f B/param %10.1f MiB  | %6.2f B/param %10.1f MiB\n", what, double(ours) / double(P),
                double(ours) / mib, double(standard) / double(P), double(standard) / mib);
  };
  std::printf("memory (%s)                          this run              | fp32 weights + fp32 AdamW\n",
              m.name.c_str());
  row("weights", weight_bytes, std_w);
  row("optimizer states", state_bytes, std_s);
  const std::string grad_row = std::string(o.fused_update ? "gradients (fused " : "gradients (") + o.grad_dtype + ")";
  row(grad_row.c_str(), grad_bytes, std_g);
  const int64_t ours_states = weight_bytes + state_bytes + grad_bytes, std_states = std_w + std_s + std_g;
  row("model states", ours_states, std_states);
  std::printf("  %-22s %8s         %10.1f MiB  | %6s         %10.1f MiB   (batch %lld x seq %lld%s%s)\n",
              "activations", "", double(act_bytes) / mib, "", double(act_bytes) / mib,
              static_cast<long long>(o.batch), static_cast<long long>(o.seq),
              o.grad_accum > 1 ? ", per micro-batch" : "", o.checkpointing ? ", checkpointing" : "");
  std::printf("  %-22s %8s         %10.1f MiB  | %6s         %10.1f MiB   ratio %.3f (model states %.3f)\n",
              "total", "", double(ours_states + act_bytes) / mib, "", double(std_states + act_bytes) / mib,
              double(ours_states + act_bytes) / double(std_states + act_bytes),
              double(ours_states) / double(std_states));
}

}  // namespace

// --profile's table: milliseconds per counted step in each phase that took
// any time, with its share, and the host clock's time per step beside the
// phases' sum (on a GPU the two differ by what the host did while the GPU
// was busy, and by the last step's tail).
void print_phase_profile(const phase_recorder& p, double host_ms_per_step) {
  const double total = p.step_total_ms();
  std::printf("where a step's time goes (--profile, %lld steps counted):\n", static_cast<long long>(p.counted_steps()));
  std::printf("  %-20s %10s %7s\n", "phase", "ms/step", "share");
  for (int i = 0; i < phase_count; ++i) {
    const double ms = p.ms_per_step(phase(i));
    if (ms <= 0.0) continue;
    std::printf("  %-20s %10.3f %6.1f%%\n", phase_name(phase(i)), ms, total > 0 ? 100.0 * ms / total : 0.0);
  }
  std::printf("  %-20s %10.3f %6.1f%%   (host clock: %.3f ms/step)\n", "sum", total, 100.0, host_ms_per_step);
}

int main(int argc, char** argv) {
  options o;
  try {
    if (!parse_args(argc, argv, o)) return 0;
    const mode_info& mode = find_mode(o.mode);
    lowbit::require(!o.export_4bit || (mode.storage == matrix_storage::quantized &&
                                       (mode.qspec.fmt == lowbit::format::nf4 || mode.qspec.fmt == lowbit::format::fp4)),
                    lowbit::errc::invalid_argument,
                    "--export-4bit keeps NF4 / FP4 weights in bitsandbytes' 4-bit layout; mode '" + mode.name +
                        "' has none (export its weights as float with --export-dtype)");
    const float peak_lr = o.lr_given ? o.lr : mode.default_lr;
    // Output targets are checked now, not after the training they would keep.
    if (!o.save_path.empty()) check_checkpoint_target(o.save_path);
    if (!o.export_dir.empty()) prepare_export_dir(o.export_dir);

    // Model config: checkpoint > HF dir > config.json > preset.
    llama_config cfg;
    if (!o.resume_path.empty()) {
      // The checkpoint's seed first: with another one the data order differs.
      const uint64_t saved_seed = checkpoint_seed(o.resume_path);
      lowbit::require(saved_seed == o.seed, lowbit::errc::invalid_argument,
                      "checkpoint '" + o.resume_path + "' was trained with --seed " + std::to_string(saved_seed) +
                          ", this run uses " + std::to_string(o.seed) +
                          " (the data order and rounding would differ; pass --seed " + std::to_string(saved_seed) + ")");
      cfg = checkpoint_config(o.resume_path);
      // A model named on the command line must be the checkpoint's.
      if (!o.config_path.empty() || o.preset_given) {
        const llama_config asked =
            o.config_path.empty() ? llama_config::preset(o.preset) : llama_config::from_hf_file(o.config_path);
        const std::string diff = checkpoint_detail::config_difference(cfg, asked);
        lowbit::require(diff.empty(), lowbit::errc::invalid_argument,
                        "checkpoint '" + o.resume_path + "' is for another model than " +
                            (o.config_path.empty() ? "--preset " + o.preset : "--config " + o.config_path) + ": " +
                            diff);
      }
    } else if (!o.init_dir.empty()) cfg = load_hf_config(o.init_dir);
    else if (!o.config_path.empty()) cfg = llama_config::from_hf_file(o.config_path);
    else cfg = llama_config::preset(o.preset);
    cfg.validate();

    std::unique_ptr<tokenizer> tok = make_tokenizer(o.tokenizer_spec);
    const corpus_format corpus = parse_corpus_format(o.data_format);
    // A pre-tokenized corpus needs no tokenizer: the default byte one then
    // neither encodes the data nor decodes a sample (its ids are not bytes).
    const bool has_tokenizer = corpus == corpus_format::text || o.tokenizer_spec != "byte";
    lowbit::require(!has_tokenizer || tok->vocab_size() <= cfg.vocab_size, lowbit::errc::invalid_argument,
                    "tokenizer '" + tok->name() + "' has " + std::to_string(tok->vocab_size()) +
                        " tokens, more than the model's vocabulary of " + std::to_string(cfg.vocab_size));
    lowbit::require(o.seq <= cfg.max_seq_len, lowbit::errc::invalid_argument,
                    "--seq " + std::to_string(o.seq) + " exceeds the model's max_seq_len " +
                        std::to_string(cfg.max_seq_len));
    const dataset data = dataset::load(o.data, corpus, *tok, cfg.vocab_size, 0.1);
    data.require_fits(o.seq);
    const double eval_windows = double(o.eval_batches) * double(o.batch) * double(o.grad_accum);
    if (o.eval_every > 0 && eval_windows > double(data.val_windows(o.seq)))
      std::fprintf(stderr,
                   "llama_train: note: the validation loss reads %.0f windows of %lld tokens (--eval-batches x "
                   "--batch x --grad-accum), the validation split holds %lld: windows are counted more than once\n",
                   eval_windows, static_cast<long long>(o.seq), static_cast<long long>(data.val_windows(o.seq)));

    session_options so;
    so.batch = o.batch;
    so.seq = o.seq;
    so.grad_accum = o.grad_accum;
    so.checkpointing = o.checkpointing;
    so.fused_update = o.fused_update;
    so.grad_dtype = parse_grad_dtype(o.grad_dtype);
    so.logits_chunk_bytes = o.logits_chunk_mib << 20;
    so.attention_chunk_bytes = o.attention_chunk_mib << 20;
    so.hparams.lr = peak_lr;
    so.hparams.beta1 = o.beta1;
    so.hparams.beta2 = o.beta2;
    so.hparams.weight_decay = o.weight_decay;
    so.hparams.seed = o.rounding_seed_given ? o.rounding_seed : o.seed;
    so.hparams.defer_gradient_checks = !o.sync_gradient_checks;
    // Large models take a while to allocate, draw or load and copy: say so.
    const bool slow_setup = !o.quiet && cfg.n_params() >= (int64_t(1) << 26);
    const auto t_setup = std::chrono::steady_clock::now();
    if (slow_setup)
      std::printf("llama_train: setting up %.2f B parameters (%s) ...\n", double(cfg.n_params()) * 1e-9,
                  o.init_dir.empty() ? "random init" : o.init_dir.c_str());
    const std::unique_ptr<session_base> session = make_session(cfg, mode, so, o.device, o.gpu_activations);
    session_base& run = *session;
    lowbit::require(run.on_cuda() || o.cuda_only_flags.empty(), lowbit::errc::invalid_argument,
                    (o.cuda_only_flags.empty() ? std::string() : o.cuda_only_flags.front()) +
                        " applies to the CUDA path only (this run trains on the CPU)");
    if (!o.init_dir.empty()) {
      const size_t unused = load_hf_weights(o.init_dir, run.weights());
      if (unused) std::fprintf(stderr, "llama_train: note: %zu tensors in '%s' are not used by the model\n", unused, o.init_dir.c_str());
    } else {
      init_random(run.weights(), cfg, o.seed);
    }
    run.weights_changed();
    if (slow_setup)
      std::printf("llama_train: set up in %s\n",
                  human_time(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_setup).count()).c_str());
    train_state st;
    st.seed = o.seed;
    if (!o.resume_path.empty()) {
      st = run.load(o.resume_path);
      if (st.step >= o.steps)
        std::fprintf(stderr, "llama_train: note: the checkpoint is at step %lld, --steps is %lld: nothing to train\n",
                     static_cast<long long>(st.step), static_cast<long long>(o.steps));
    }
    const int64_t P = run.layout().total();

    if (!o.quiet) {
      std::printf("llama_train: mode %s: %s\n", mode.name.c_str(), mode.description.c_str());
      std::printf("model: %s\n", cfg.summary().c_str());
      std::printf("data: %s (%s tokenizer): %zu training / %zu validation tokens\n", o.data.c_str(),
                  tok->name().c_str(), data.train.size(), data.val.size());
      std::printf("device: %s\n", run.device_description().c_str());
      print_memory_table(mode, P, run.weight_bytes(), run.optimizer().state_bytes(), run.gradient_bytes(),
                         run.activation_bytes(), o);
      std::printf("steps %lld, batch %lld x seq %lld%s, lr %.3g (warmup %lld, cosine to %.2gx), betas %.3g %.3g, clip %.3g, "
                  "seed %llu%s%s\n",
                  static_cast<long long>(o.steps), static_cast<long long>(o.batch), static_cast<long long>(o.seq),
                  o.grad_accum > 1 ? (" x " + std::to_string(o.grad_accum) + " micro-batches per step").c_str() : "",
                  double(peak_lr), static_cast<long long>(o.warmup), double(o.min_lr_ratio), double(so.hparams.beta1),
                  double(so.hparams.beta2), double(o.clip), static_cast<unsigned long long>(o.seed),
                  so.hparams.seed != o.seed ? (", rounding seed " + std::to_string(so.hparams.seed)).c_str() : "",
                  st.step ? (", resuming at step " + std::to_string(st.step)).c_str() : "");
      std::fflush(stdout);
    }

    std::ofstream log;
    if (!o.log_path.empty()) {
      log.open(o.log_path, st.step ? std::ios::app : std::ios::trunc);
      lowbit::require(bool(log), lowbit::errc::io, "cannot write log '" + o.log_path + "'");
    }
    const int64_t M = o.batch * o.seq * o.grad_accum;  // tokens per optimizer step
    std::vector<int32_t> x(static_cast<size_t>(M)), y(static_cast<size_t>(M));
    if (st.step > 0 && st.tokens != st.step * M)
      std::fprintf(stderr,
                   "llama_train: note: the checkpoint took %lld tokens in %lld steps, not %lld per step as this run "
                   "does (another --batch, --seq or --grad-accum); batches are still drawn by step\n",
                   static_cast<long long>(st.tokens), static_cast<long long>(st.step), static_cast<long long>(M));

    auto evaluate = [&]() { return run.evaluate(data, o.eval_batches); };
    auto log_eval = [&](int64_t step, double v) {
      if (!o.quiet) std::printf("step %5lld | validation loss %.4f\n", static_cast<long long>(step), v);
      if (log) log << "{\"step\":" << step << ",\"val_loss\":" << json_number(v) << "}\n" << std::flush;
    };
    auto save = [&]() {
      run.save(o.save_path, st);
      if (!o.quiet) std::printf("saved checkpoint %s (step %lld)\n", o.save_path.c_str(), static_cast<long long>(st.step));
    };

    double first_val = std::nan(""), last_val = std::nan("");
    bool first_evaluated = false, evaluated = false;  // (a diverged run's losses are NaN)
    if (st.step == 0 && o.eval_every > 0) {
      first_val = evaluate();
      first_evaluated = true;
      log_eval(0, first_val);
    }
    const int64_t end = o.stop_after >= 0 ? std::min(o.steps, o.stop_after) : o.steps;
    const auto t_start = std::chrono::steady_clock::now();
    auto t_last = t_start;
    int64_t steps_run = 0, skipped_steps = 0;
    double loss = 0;
    double train_seconds = 0;  // excludes evaluation, checkpoints and sampling
    double timed_seconds = 0;  // the same without the first --timing-warmup steps
    int64_t timed_steps = 0;
    phase_recorder* profile = o.profile ? &run.phase_profile() : nullptr;
    for (; st.step < end; ++steps_run) {
      const int64_t step = st.step;
      const auto t_step = std::chrono::steady_clock::now();
      const float lr = lr_at(o, peak_lr, step);
      data.train_batch(o.seed, step, o.batch * o.grad_accum, o.seq, x.data(), y.data());
      if (profile) profile->begin_step();
      const step_result r = run.step(x.data(), y.data(), lr, o.clip);
      if (profile) profile->end_step(steps_run >= o.timing_warmup);
      loss = r.loss;
      const double grad_norm = r.grad_norm;
      if (r.skipped) {
        ++skipped_steps;
        std::fprintf(stderr, "llama_train: step %lld: non-finite loss or gradient, update skipped\n",
                     static_cast<long long>(step + 1));  // numbered as the progress line and the log number it
      }
      st.step = step + 1;
      st.tokens += M;
      const auto now = std::chrono::steady_clock::now();
      train_seconds += std::chrono::duration<double>(now - t_step).count();
      if (steps_run >= o.timing_warmup) {
        timed_seconds += std::chrono::duration<double>(now - t_step).count();
        ++timed_steps;
      }
      const double elapsed = std::chrono::duration<double>(now - t_start).count();
      const double tok_s = double(M) * double(steps_run + 1) / std::max(train_seconds, 1e-9);
      if (log)
        log << "{\"step\":" << st.step << ",\"loss\":" << json_number(loss) << ",\"lr\":" << lr << ",\"grad_norm\":"
            << (std::isfinite(grad_norm) ? std::to_string(grad_norm) : "null") << ",\"tokens\":" << st.tokens
            << ",\"elapsed_s\":" << elapsed << ",\"tokens_per_s\":" << tok_s << "}\n";
      if (!o.quiet && (st.step % o.log_every == 0 || st.step == end)) {
        const double step_s = std::chrono::duration<double>(now - t_last).count() /
                              double(std::min<int64_t>(o.log_every, steps_run + 1));
        const double eta = double(end - st.step) * elapsed / double(steps_run + 1);
        std::printf("step %5lld/%lld | loss %.4f | lr %.2e | %7.*f tok/s | %.2f s/step | ETA %s\n",
                    static_cast<long long>(st.step), static_cast<long long>(o.steps), loss, double(lr),
                    tok_s < 100 ? 2 : 0, tok_s, step_s,
                    human_time(eta).c_str());
        std::fflush(stdout);
        t_last = now;
      }
      if (o.eval_every > 0 && (st.step % o.eval_every == 0 || st.step == o.steps)) {
        last_val = evaluate();
        evaluated = true;
        log_eval(st.step, last_val);
      }
      if (!o.save_path.empty() && o.save_every > 0 && st.step % o.save_every == 0 && st.step != end) save();
    }
    if (log) log.flush();
    if (!o.save_path.empty()) save();
    if (!o.export_dir.empty()) {
      run.weights_to_host();
      const bool sentencepiece = o.tokenizer_spec != "byte";
      export_hf(o.export_dir, cfg, run.weights(), parse_export_dtype(o.export_dtype),
                sentencepiece ? o.tokenizer_spec : "", o.export_4bit);
      if (!o.quiet)
        std::printf("exported the model to %s (config.json, model.safetensors in %s%s%s)\n", o.export_dir.c_str(),
                    o.export_dtype.c_str(), o.export_4bit ? " with the layers' weights in bitsandbytes 4-bit" : "",
                    sentencepiece ? ", tokenizer.model" : "");
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    if (!evaluated && o.eval_every > 0) {
      last_val = evaluate();
      evaluated = true;
    }

    if (o.sample_tokens > 0 && !o.quiet && !has_tokenizer)
      std::printf("no sample: the corpus is pre-tokenized and no --tokenizer was given to decode one\n");
    if (o.sample_tokens > 0 && !o.quiet && has_tokenizer) {
      std::vector<int32_t> ctx = tok->encode(o.prompt);
      if (ctx.empty()) ctx.push_back(int32_t('\n'));
      std::mt19937_64 gen(o.seed + 7);
      std::vector<int32_t> generated;
      // Only ids the tokenizer can decode (a model's vocabulary may be
      // padded past the tokenizer's).
      const int n_pick = std::min(cfg.vocab_size, tok->vocab_size());
      std::vector<double> p(static_cast<size_t>(n_pick));
      for (int64_t t = 0; t < o.sample_tokens; ++t) {
        const int64_t len = std::min<int64_t>(int64_t(ctx.size()), o.seq);
        const int32_t* window = ctx.data() + (int64_t(ctx.size()) - len);
        std::vector<float> last(static_cast<size_t>(cfg.vocab_size));
        run.last_logits(window, len, last.data());
        const float* logits = last.data();
        double mx = logits[0];
        for (int v = 1; v < n_pick; ++v) mx = std::max(mx, double(logits[v]));
        for (int v = 0; v < n_pick; ++v) p[size_t(v)] = std::exp((double(logits[v]) - mx) / o.temperature);
        std::discrete_distribution<int> pick(p.begin(), p.end());
        const int32_t next = int32_t(pick(gen));
        ctx.push_back(next);
        generated.push_back(next);
      }
      std::printf("sample (temperature %.2f):\n%s%s\n---\n", double(o.temperature), o.prompt.c_str(),
                  tok->decode(generated).c_str());
    }
    const double train_tok_s = timed_steps > 0 && o.timing_warmup > 0
                                   ? double(timed_steps * M) / std::max(timed_seconds, 1e-9)
                                   : double(steps_run * M) / std::max(train_seconds, 1e-9);
    std::printf("llama_train: mode %s: %lld steps in %s", mode.name.c_str(), static_cast<long long>(steps_run),
                human_time(seconds).c_str());
    if (steps_run > 0)
      std::printf(" (%.*f training tokens/s), final training loss %.4f", train_tok_s < 100 ? 2 : 0, train_tok_s, loss);
    if (evaluated) std::printf(", validation loss %.4f", last_val);
    if (evaluated && first_evaluated) std::printf(" (from %.4f at step 0)", first_val);
    if (skipped_steps) std::printf(", %lld steps skipped", static_cast<long long>(skipped_steps));
    struct rusage usage;
    double rss_mib = -1;
    if (getrusage(RUSAGE_SELF, &usage) == 0) {
      rss_mib = double(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB
      std::printf(", peak resident memory %.1f MiB", rss_mib);
    }
    // model FLOPs per token: 6 N for the matrices' forward + backward, plus
    // 12 L S D for attention's score and value products (the PaLM / nanoGPT
    // MFU convention; the same formula as bench/llama_torch_peer.py)
    const double flops_per_token = 6.0 * double(P) + 12.0 * double(cfg.n_layers) * double(o.seq) * double(cfg.dim);
    const double mfu = train_tok_s * flops_per_token / (o.peak_tflops * 1e12);
    if (run.peak_device_mib() >= 0)
      std::printf(", peak device memory %.1f MiB (%.1f MiB above the %.1f MiB in use at the start: CUDA context, "
                  "other processes), MFU %.1f%% of %.1f TFLOP/s",
                  run.peak_device_mib(), run.peak_device_mib() - run.start_device_mib(), run.start_device_mib(),
                  100.0 * mfu, o.peak_tflops);
    std::printf("\n");
    const int64_t counted_steps = timed_steps > 0 && o.timing_warmup > 0 ? timed_steps : steps_run;
    const double host_ms_per_step =
        1e3 * (o.timing_warmup > 0 ? timed_seconds : train_seconds) / double(std::max<int64_t>(counted_steps, 1));
    if (profile && profile->counted_steps() > 0) print_phase_profile(*profile, host_ms_per_step);
    if (log) {  // one summary record, for scripts (scripts/llama-gpu-figures.sh)
      const int64_t states = run.weight_bytes() + run.optimizer().state_bytes() + run.gradient_bytes();
      log << "{\"summary\":true,\"mode\":\"" << mode.name << "\",\"device\":\"" << run.device_description()
          << "\",\"params\":" << P << ",\"batch\":" << o.batch << ",\"seq\":" << o.seq
          << ",\"grad_accum\":" << o.grad_accum
          << ",\"checkpointing\":" << (o.checkpointing ? "true" : "false")
          << ",\"fused_update\":" << (o.fused_update ? "true" : "false") << ",\"grad_dtype\":\"" << o.grad_dtype
          << "\",\"steps\":" << steps_run
          << ",\"tokens_per_s\":" << train_tok_s << ",\"flops_per_token\":" << flops_per_token
          << ",\"mfu\":" << (run.peak_device_mib() >= 0 ? std::to_string(mfu) : "null")
          << ",\"peak_device_mib\":" << (run.peak_device_mib() >= 0 ? std::to_string(run.peak_device_mib()) : "null")
          << ",\"start_device_mib\":" << (run.start_device_mib() >= 0 ? std::to_string(run.start_device_mib()) : "null")
          << ",\"peak_rss_mib\":" << rss_mib << ",\"weight_bytes\":" << run.weight_bytes()
          << ",\"state_bytes\":" << run.optimizer().state_bytes() << ",\"gradient_bytes\":" << run.gradient_bytes()
          << ",\"activation_bytes\":" << run.activation_bytes()
          << ",\"model_state_bytes_per_param\":" << double(states) / double(P)
          << ",\"final_loss\":" << (steps_run > 0 ? json_number(loss) : json_number(std::nan("")))
          << ",\"val_loss\":" << (evaluated && std::isfinite(last_val) ? std::to_string(last_val) : std::string("null"));
      if (profile && profile->counted_steps() > 0) {
        log << ",\"profiled_steps\":" << profile->counted_steps() << ",\"host_ms_per_step\":" << host_ms_per_step
            << ",\"phase_ms_per_step\":{";
        for (int i = 0; i < phase_count; ++i)
          log << (i ? "," : "") << "\"" << phase_key(phase(i)) << "\":" << profile->ms_per_step(phase(i));
        log << "}";
      }
      log << "}\n";
    }
    return 0;
  } catch (const lowbit::error& e) {
    std::fprintf(stderr, "llama_train: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "llama_train: error: out of host memory (a smaller --batch, --seq or model, or "
                         "--checkpointing, needs less)\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llama_train: error: %s\n", e.what());
    return 1;
  }
}
