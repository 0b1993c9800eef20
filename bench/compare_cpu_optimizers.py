#!/usr/bin/env python3
"""Peer figures for bench_optimizer_cpu: times one optimizer step of PyTorch's
AdamW (fused=True, else foreach) and of bitsandbytes' 8-bit AdamW / Lion on CPU
tensors of the same size, in this process, and prints params/s per optimizer.

Development-only comparison: torch and bitsandbytes are never dependencies of
lowbit. Run with a Python that has them, e.g.
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch bitsandbytes
    /tmp/venv/bin/python bench/compare_cpu_optimizers.py --n 16777216
Where an optimizer cannot run on CPU the script says so instead of a figure.

With lowbit's Python package importable (PYTHONPATH=python,
LOWBIT_C_LIBRARY=.../liblowbit_c.so) lowbit's torch.optim classes run on
the same tensors in the same process (lowbit.AdamW8bit, lowbit.Lion8bit,
and AdamW with float32 states): the figures a PyTorch user sees, binding
overhead included. LOWBIT_NUM_THREADS is set to --threads for them.
"""
import argparse
import time


def time_steps(opt, params, grads, steps):
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()  # warm-up (allocates states)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=16 << 20, help="elements in the tensor")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()

    import os
    if args.threads:
        os.environ["LOWBIT_NUM_THREADS"] = str(args.threads)  # before lowbit's thread pool starts
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, n = {args.n}")
    gen = torch.Generator().manual_seed(0)

    def fresh(dtype=torch.float32):
        p = torch.nn.Parameter((torch.randn(args.n, generator=gen) * 0.02).to(dtype))
        g = (torch.randn(args.n, generator=gen) * 0.02).to(dtype)
        return [p], [g]

    rows = []
    for name, make in [
        ("torch AdamW fused (fp32)", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)),
        ("torch AdamW foreach (fp32)", lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True)),
    ]:
        ps, gs = fresh()
        try:
            dt = time_steps(make(ps), ps, gs, args.steps)
            rows.append((name, args.n / dt / 1e6, dt * 1e3))
        except Exception as e:  # e.g. fused not available on this CPU build
            rows.append((name, None, str(e).splitlines()[0][:80]))
    try:
        import bitsandbytes as bnb
        print(f"bitsandbytes {bnb.__version__}")
        for name, cls in [("bnb AdamW8bit", "AdamW8bit"), ("bnb Lion8bit", "Lion8bit")]:
            ps, gs = fresh()
            try:
                dt = time_steps(getattr(bnb.optim, cls)(ps, lr=1e-4), ps, gs, args.steps)
                rows.append((name, args.n / dt / 1e6, dt * 1e3))
            except Exception as e:
                rows.append((name, None, str(e).splitlines()[0][:80]))
    except ImportError:
        rows.append(("bitsandbytes", None, "not installed"))

    try:
        import lowbit
        lowbit.compositions()  # loads the library now
        for name, make in [
            ("lowbit AdamW (fp32 states)", lambda ps: lowbit.LowbitOptimizer(ps, rule="adamw", states="fp32", lr=1e-3)),
            ("lowbit AdamW8bit", lambda ps: lowbit.AdamW8bit(ps, lr=1e-4)),
            ("lowbit Lion8bit", lambda ps: lowbit.Lion8bit(ps, lr=1e-4)),
        ]:
            ps, gs = fresh()
            dt = time_steps(make(ps), ps, gs, args.steps)
            rows.append((name, args.n / dt / 1e6, dt * 1e3))
    except Exception as e:  # not on PYTHONPATH, or no liblowbit_c
        rows.append(("lowbit (Python package)", None, f"{type(e).__name__}: {e}"))

    print(f"{'optimizer':32s} {'Mparams/s':>10s} {'ms/step':>10s}")
    for name, rate, ms in rows:
        if rate is None:
            print(f"{name:32s} {'-':>10s}  could not run: {ms}")
        else:
            print(f"{name:32s} {rate:10.1f} {ms:10.2f}")


if __name__ == "__main__":
    main()
