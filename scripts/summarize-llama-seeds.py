#!/usr/bin/env python3
"""Seed spread of llama_train's accuracy runs (docs/RESULTS.md, "Seeds"):
final validation loss of each mode at each seed, its ratio to the fp32-adamw
run of the same seed, and the mean of those ratios over the seeds present.

Usage: summarize-llama-seeds.py DIR SEED... -- MODE...
DIR holds <mode>-seed<N>.jsonl logs; for seed 1337 without such a log, the
run of the main table is read from DIR/../<mode>.jsonl. A mode that
lacks a seed's log shows "-" there and is averaged over what it has.
BASELINE_DIR (environment) reads the fp32-adamw logs from another such
directory (fp32-adamw draws no random bits, so one set serves builds that
differ only in their random draws).

PAIRS (environment), e.g. "qft:qft-reencode qft:fp32-adamw", adds a second
table: for each pair A:B, A's distance from B at every seed where both ran,
in points (per cent) of B's validation loss, with the mean, the standard
deviation and the standard error of the mean over those seeds."""
import json
import math
import os
import sys

args = sys.argv[1:]
out_dir, rest = args[0], args[1:]
split = rest.index("--")
seeds, modes = rest[:split], rest[split + 1:]


def final_val(mode, seed, directory=None):
    directory = directory or out_dir
    path = os.path.join(directory, f"{mode}-seed{seed}.jsonl")
    if seed == "1337" and not os.path.exists(path):
        # the seed runs were made before the CPU products fused their
        # multiply-adds (2026-11-28, night): their seed-1337 run is the one of
        # that arithmetic, kept in 2026-11-28-no-fma/
        path = os.path.join(directory, "..", "2026-11-28-no-fma", f"{mode}.jsonl")
    if not os.path.exists(path):
        return None
    last = None
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "val_loss" in r and "step" in r and not r.get("summary"):
                last = r["val_loss"]
    return last


base = {s: final_val("fp32-adamw", s, os.environ.get("BASELINE_DIR")) for s in seeds}
print("| mode | " + " | ".join(f"seed {s}" for s in seeds) + " | mean vs fp32-adamw |")
print("|---|" + "---|" * len(seeds) + "---|")
for m in modes:
    cells, ratios = [], []
    for s in seeds:
        v = final_val(m, s)
        if v is None:
            cells.append("-")
            continue
        if base[s] and m != "fp32-adamw":
            ratio = 100.0 * (v / base[s] - 1.0)
            ratios.append(ratio)
            cells.append(f"{v:.4f} ({ratio:+.2f}%)")
        else:
            cells.append(f"{v:.4f}")
    mean = f"{sum(ratios) / len(ratios):+.2f}% (n={len(ratios)})" if ratios else "-"
    print(f"| {m} | " + " | ".join(cells) + f" | {mean} |")

pairs = [p.split(":") for p in os.environ.get("PAIRS", "").split()]
if pairs:
    print()
    print("| distance (points of B's loss) | " + " | ".join(seeds) + " | mean | sd | standard error |")
    print("|---|" + "---|" * len(seeds) + "---|---|---|")
for a, b in pairs:
    cells, d = [], []
    for s in seeds:
        va = final_val(a, s)
        vb = base[s] if b == "fp32-adamw" else final_val(b, s)
        if va is None or vb is None:
            cells.append("-")
            continue
        d.append(100.0 * (va / vb - 1.0))
        cells.append(f"{d[-1]:+.2f}")
    n = len(d)
    mean = sum(d) / n if n else float("nan")
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else float("nan")
    se = sd / math.sqrt(n) if n > 1 else float("nan")
    print(f"| {a} against {b} (n={n}) | " + " | ".join(cells) + f" | **{mean:+.2f}** | {sd:.2f} | {se:.2f} |")
