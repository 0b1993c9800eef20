#!/usr/bin/env python3
"""Peak host memory of one training step of a stack of linear layers from
PyTorch on the CPU: torch float32 weights with torch's AdamW, bitsandbytes'
AdamW8bit, and lowbit's QFT (lowbit.torch_nn: int8 weights without a float
copy, Lion with 8-bit momentum, each layer updated in the backward as its
gradient appears). Each configuration runs in a fresh subprocess; the
figure is the process's peak resident memory (ru_maxrss) after the steps
minus its resident memory right before the model was built (Python, torch
and the libraries loaded), so it counts weights, optimizer states,
gradients, activations and the allocator's slack.

glibc's malloc adapts its mmap threshold to the largest block freed, so
whether freed multi-MiB blocks (the float weight each layer is quantized
from, gradients, activations) return to the system or stay in the heap
depends on the order of events, and peaks of the same run varied by a
factor of two (lowbit-qft: 244 to 515 MiB). The subprocesses therefore run
with MALLOC_MMAP_THRESHOLD_=1048576 (blocks of 1 MiB and more always
mmapped, returned when freed): the same for every configuration, and
repeatable to 0.1 %. --glibc-default measures with glibc's default instead.

Development-only (torch, bitsandbytes: never dependencies of lowbit). Run
    PYTHONPATH=python LOWBIT_C_LIBRARY=build/capi/liblowbit_c.so \\
        /tmp/venv/bin/python bench/qft_torch_memory.py --layers 24 --width 2048
"""
import argparse
import json
import os
import resource
import subprocess
import sys


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run_one(mode, layers, width, batch, steps):
    import torch

    torch.manual_seed(0)
    if mode.startswith("lowbit"):
        import lowbit  # noqa: F401  (loads the C library before the baseline)
        from lowbit.torch_nn import QuantizedLinear, QuantizedWeightOptimizer
        lowbit.compositions()
    if mode == "bnb-adamw8":
        import bitsandbytes  # noqa: F401
    base = rss_mib()
    if mode == "lowbit-qft":
        mods = []
        for _ in range(layers):
            lin = torch.nn.Linear(width, width, bias=False)
            mods += [QuantizedLinear.from_linear(lin), torch.nn.ReLU()]
            del lin
        model = torch.nn.Sequential(*mods)
        opt = QuantizedWeightOptimizer(model, lr=1e-4, seed=1)
    else:
        model = torch.nn.Sequential(*[m for _ in range(layers)
                                      for m in (torch.nn.Linear(width, width, bias=False), torch.nn.ReLU())])
        if mode == "torch-adamw":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
        else:
            import bitsandbytes as bnb
            opt = bnb.optim.AdamW8bit(model.parameters(), lr=1e-4)
    params = layers * width * width
    x = torch.randn(batch, width)
    for _ in range(steps):
        loss = model(x).square().mean()
        if mode != "lowbit-qft":
            opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"mode": mode, "params": params, "peak_mib_above_start": round(peak - base, 1),
            "bytes_per_param": round((peak - base) * 2 ** 20 / params, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--glibc-default", action="store_true",
                    help="leave glibc's adaptive mmap threshold on (peaks vary from run to run)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.layers, args.width, args.batch, args.steps)))
        return
    env = dict(os.environ)
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    print("%d layers of %d x %d (%.1f M parameters), batch %d, %d steps, %s" % (
        args.layers, args.width, args.width, args.layers * args.width ** 2 / 1e6, args.batch, args.steps,
        "glibc's default malloc" if args.glibc_default else "MALLOC_MMAP_THRESHOLD_=1048576"))
    for mode in ("torch-adamw", "bnb-adamw8", "lowbit-qft"):
        out = subprocess.run([sys.executable, __file__, "--one", mode, "--layers", str(args.layers), "--width",
                              str(args.width), "--batch", str(args.batch), "--steps", str(args.steps)],
                             capture_output=True, text=True, env=env)
        line = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if out.returncode or not line:
            print("%-12s failed: %s" % (mode, (out.stderr.strip().splitlines() or ["?"])[-1]))
            continue
        r = json.loads(line[-1])
        print("%-12s peak %8.1f MiB above start, %5.2f bytes per parameter" % (
            mode, r["peak_mib_above_start"], r["bytes_per_param"]))


if __name__ == "__main__":
    main()
