#!/usr/bin/env python3
"""scripts/gemm-table.py JSON...

Turns bench_dequant_gemm_cuda results (Google Benchmark JSON, one or more
files, e.g. one per weight shape) into the roofline-style markdown tables of
docs/PERFORMANCE.md: one row per (shape, M, direction) with the time of
cuBLAS bf16 and of each weight format through the automatic dispatch, the
forced NF4 regimes, and, for NF4 nested, % of copy bandwidth, TFLOP/s, % of
cuBLAS and the speed against the dequantize-then-cuBLAS fallback. Then the
issue-4 goals, read off the same numbers, and the fastest measured NF4
regime per row (the data behind the dispatch thresholds). Standard library
only."""
import json
import re
import sys
from collections import defaultdict


def load(paths):
    rows = defaultdict(dict)  # (n, k, m, dir) -> {variant: record}
    copy = {}
    for p in paths:
        for r in json.load(open(p)).get("benchmarks", []):
            if r.get("run_type", "iteration") != "iteration" or r.get("error_occurred"):
                continue
            name = r["name"]
            nk = re.search(r"/n:(\d+)/k:(\d+)", name)
            if not nk:
                continue
            n, k = int(nk.group(1)), int(nk.group(2))
            if name.startswith("copy_d2d"):
                copy[(n, k)] = r
                continue
            m = int(re.search(r"/m:(\d+)", name).group(1))
            direction, variant = name.split("/")[0], "/".join(name.split("/")[1:3])
            if variant.startswith("cublas_bf16"):
                variant = "cublas_bf16"
            rows[(n, k, m, direction)][variant] = r
    return rows, copy


def us(r):
    return "-" if r is None else f"{r['real_time']:.1f}"


def main(paths):
    rows, copy = load(paths)
    print("Times in microseconds (mean over Google Benchmark's iterations; CUDA events, L2 flushed).")
    print("`auto` = the automatic dispatch; gemv / mma / fallback = NF4 nested with the regime forced;")
    print("% copy = (packed W + scales + X + Y bytes) / time against the device-to-device copy measured in the")
    print("same binary; vs fallback = fallback time / auto time (>= 1: not slower).\n")
    for direction in ("fwd", "bwd"):
        print(f"#### {'forward Y = X W^T' if direction == 'fwd' else 'backward dX = dY W'}\n")
        print("| N x K | M | cuBLAS bf16 | nf4 auto | int4 auto | int8 auto | nf4 gemv | nf4 mma | nf4 fallback |"
              " nf4 auto regime | nf4 % copy | nf4 TFLOP/s | nf4 % cuBLAS | nf4 vs fallback |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
        for (n, k, m, d) in sorted(rows):
            if d != direction:
                continue
            v = rows[(n, k, m, d)]
            a = v.get("nf4_nested/auto")
            f = lambda key, fmt: "-" if a is None or key not in a else format(a[key], fmt)
            regime = (a or {}).get("label", "").replace("regime=", "")
            print(f"| {n}x{k} | {m} | {us(v.get('cublas_bf16'))} | {us(a)} | {us(v.get('int4/auto'))} | "
                  f"{us(v.get('int8/auto'))} | {us(v.get('nf4_nested/gemv'))} | {us(v.get('nf4_nested/mma'))} | "
                  f"{us(v.get('nf4_nested/dequant_cublas'))} | {regime} | {f('pct_of_copy', '.1f')} | "
                  f"{f('TFLOPs', '.1f')} | {f('pct_of_cublas', '.1f')} | {f('vs_fallback', '.2f')} |")
        print()

    print("#### Goals (issue 4), read off the rows above\n")
    m1 = [(n, k, v["nf4_nested/auto"]["pct_of_copy"]) for (n, k, m, d), v in sorted(rows.items())
          if d == "fwd" and m == 1 and n * k >= 4096 * 11008 and "nf4_nested/auto" in v]
    print("- M = 1 NF4 nested at >= 80 % of copy (4096x11008 and larger): " +
          ", ".join(f"{n}x{k} {p:.1f} %" for n, k, p in m1))
    ratios = [v["nf4_nested/auto"]["real_time"] / v["int4/auto"]["real_time"] for (n, k, m, d), v in rows.items()
              if m <= 64 and "nf4_nested/auto" in v and "int4/auto" in v]
    if ratios:
        print(f"- NF4 within 1.1x of int4 time for M <= 64: worst {max(ratios):.2f}x, best {min(ratios):.2f}x "
              f"over {len(ratios)} rows")
    for d, goal in (("fwd", 85), ("bwd", 80)):
        big = [(n, k, min(v[x]["pct_of_cublas"] for x in ("nf4_nested/auto", "int4/auto", "int8/auto") if x in v))
               for (n, k, m, dd), v in sorted(rows.items()) if dd == d and m >= 4096]
        print(f"- M >= 4096 {d} at >= {goal} % of cuBLAS bf16 (worst of nf4 / int4 / int8 auto): " +
              ", ".join(f"{n}x{k} {p:.1f} %" for n, k, p in big))
    slow = [(n, k, m, d, x, v[x]["vs_fallback"]) for (n, k, m, d), v in sorted(rows.items())
            for x in ("nf4_nested/auto", "int4/auto", "int8/auto") if x in v and v[x].get("vs_fallback", 1) < 0.97]
    print(f"- never slower than the fallback (vs fallback >= 0.97, i.e. beyond run-to-run noise): "
          f"{len(slow)} rows slower" + (": " + "; ".join(f"{d} {n}x{k} M={m} {x.split('/')[0]} {r:.2f}"
                                                         for n, k, m, d, x, r in slow) if slow else ""))
    print("\n#### Fastest measured NF4 regime per (shape, M, direction)\n")
    print("| direction | M | " + " | ".join(f"{n}x{k}" for n, k in sorted({(n, k) for n, k, _, _ in rows})) + " |")
    shapes = sorted({(n, k) for n, k, _, _ in rows})
    print("|---|---:|" + "---|" * len(shapes))
    for d in ("fwd", "bwd"):
        for m in sorted({m for _, _, m, _ in rows}):
            cells = []
            for n, k in shapes:
                v = rows.get((n, k, m, d), {})
                cand = {x.split("/")[1]: v[x]["real_time"] for x in
                        ("nf4_nested/gemv", "nf4_nested/mma", "nf4_nested/dequant_cublas") if x in v}
                if not cand:
                    cells.append("-")
                    continue
                best = min(cand, key=cand.get)
                cells.append(f"{best} ({cand[best]:.0f})")
            print(f"| {d} | {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
