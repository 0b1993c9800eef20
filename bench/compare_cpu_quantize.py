#!/usr/bin/env python3
"""Peer figures for bench_quantize_cpu: times bitsandbytes' blockwise quantize
and dequantize on CPU tensors (NF4 and FP4 with float32 or double-quantized
scales, the 8-bit dynamic map), with the same element count, block size and
dense dtypes as lowbit's rows, in this process, and prints ms per call next to
the row name bench_quantize_cpu gives the same case.

Development-only comparison: torch and bitsandbytes are never dependencies of
lowbit. Run with a Python that has them, e.g.
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch bitsandbytes
    /tmp/venv/bin/python bench/compare_cpu_quantize.py --n 16777216 --threads 1
and compare with
    LOWBIT_NUM_THREADS=1 bench_quantize_cpu --n=16777216
Each figure is the median of --repeats timed calls after one untimed call.
Where bitsandbytes cannot run a case on CPU the script says so instead of a
figure.

With lowbit's Python package importable (PYTHONPATH=python,
LOWBIT_C_LIBRARY=.../liblowbit_c.so) the same cases also run through it, on
the same torch tensors in the same process (lowbit.quantize allocating its
torch outputs each call, as bitsandbytes does; dequantize into a new
tensor, as bitsandbytes does, and into a preallocated one, which
bitsandbytes' CPU dequantize does not offer: a new 64 MiB output costs
about 25 ms of page faults on first touch here, which then dominates
either library's time): the figures a Python user sees, binding overhead
included. LOWBIT_NUM_THREADS is set to --threads for that.
"""
import argparse
import statistics
import time


def median_ms(fn, repeats):
    fn()  # warm-up: first-call allocations and dispatch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=16 << 20, help="elements in the tensor")
    ap.add_argument("--block", type=int, default=64, help="block size (lowbit's rows use 64)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()

    import os
    if args.threads:
        os.environ["LOWBIT_NUM_THREADS"] = str(args.threads)  # before lowbit's thread pool starts
    import torch
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    try:
        import lowbit
        lowbit.compositions()  # loads the library now, so a missing one is reported here
    except Exception as e:  # not on PYTHONPATH, or no liblowbit_c
        print(f"lowbit's Python package not used: {type(e).__name__}: {e}")
        lowbit = None

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, bitsandbytes {bnb.__version__}, {torch.get_num_threads()} threads, "
          f"n = {args.n}, block {args.block}")
    torch.manual_seed(0)
    dense = {
        "f32": torch.randn(args.n, dtype=torch.float32),
        "bf16": torch.randn(args.n, dtype=torch.float32).to(torch.bfloat16),
        "f16": torch.randn(args.n, dtype=torch.float32).to(torch.float16),
    }
    cases = [
        ("nf4/f32scale", lambda x: F.quantize_4bit(x, blocksize=args.block, quant_type="nf4", compress_statistics=False)),
        ("nf4/nested", lambda x: F.quantize_4bit(x, blocksize=args.block, quant_type="nf4", compress_statistics=True)),
        ("fp4/f32scale", lambda x: F.quantize_4bit(x, blocksize=args.block, quant_type="fp4", compress_statistics=False)),
        ("dynamic8/f32scale", lambda x: F.quantize_blockwise(x, blocksize=args.block)),
    ]
    lowbit_cases = {"nf4/f32scale": ("nf4", False), "nf4/nested": ("nf4", True), "fp4/f32scale": ("fp4", False),
                    "dynamic8/f32scale": ("dynamic8", False)}
    print(f"{'lowbit row':40s} {'bnb quantize ms':>16s} {'bnb dequantize ms':>18s}"
          + (f" {'lowbit.quantize ms':>19s} {'lowbit.dequantize ms':>21s} {'.. into out= ms':>15s}" if lowbit else ""))
    for name, quantize in cases:
        for dtype_name, x in dense.items():
            row = f"{name}/{dtype_name}"
            mine = ""
            if lowbit:
                fmt, nested = lowbit_cases[name]
                q = lowbit.quantize(x, fmt, block_size=args.block, nested=nested)
                lq_ms = median_ms(lambda: lowbit.quantize(x, fmt, block_size=args.block, nested=nested), args.repeats)
                ldq_ms = median_ms(lambda: lowbit.dequantize(q, dtype=x.dtype), args.repeats)
                out = torch.empty_like(x)
                lout_ms = median_ms(lambda: lowbit.dequantize(q, out=out), args.repeats)
                mine = f" {lq_ms:19.2f} {ldq_ms:21.2f} {lout_ms:15.2f}"
            try:
                packed, state = quantize(x)
                if name.startswith("dynamic8"):
                    dequantize = lambda: F.dequantize_blockwise(packed, state)
                else:
                    dequantize = lambda: F.dequantize_4bit(packed, state)
                q_ms = median_ms(lambda: quantize(x), args.repeats)
                dq_ms = median_ms(dequantize, args.repeats)
                print(f"{row:40s} {q_ms:16.2f} {dq_ms:18.2f}" + mine)
            except Exception as e:  # a case bitsandbytes does not run on CPU
                print(f"{row:40s} not run on CPU: {type(e).__name__}: {str(e).splitlines()[0][:80]}" + mine)


if __name__ == "__main__":
    main()
