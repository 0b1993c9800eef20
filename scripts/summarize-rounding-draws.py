#!/usr/bin/env python3
"""Rounding draws at one seed (docs/RESULTS.md, "Rounding draws at the
default seed"): llama_train runs that share --seed (data order, initial
weights) and differ only in --rounding-seed. For each mode, the final
validation loss of every draw and its distance, in points (per cent) of the
reference's validation loss, from each reference run of the same seed
(modes that draw no random bits, so one run each), with the mean, the
standard deviation, the standard error and the range over the draws.

Usage: summarize-rounding-draws.py DIR SEED -- MODE... [-- REFERENCE...]
DIR holds <mode>-seed<SEED>-round<R>.jsonl logs. The draw whose rounding
seed is SEED itself (the default) is read from docs/results/<mode>.jsonl
for seed 1337 and docs/results/seeds/<mode>-seed<SEED>.jsonl otherwise,
as are the references (default: fp32-adamw fp32-lion)."""
import glob
import json
import math
import os
import re
import sys

here = os.path.dirname(os.path.abspath(__file__))
results = os.path.join(here, "..", "docs", "results")
args = sys.argv[1:]
draw_dir, seed = args[0], args[1]
rest = args[3:]  # after the first "--"
modes, refs = (rest[: rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else (rest, ["fp32-adamw", "fp32-lion"])


def final_val(path, require_summary=False):
    """The last validation loss of a run's log; with require_summary, None
    until the run has written its summary line (still running). The logs
    of the main table from before summary lines existed are complete."""
    last, finished = None, False
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            finished = finished or bool(r.get("summary"))
            if "val_loss" in r and "step" in r and not r.get("summary"):
                last = r["val_loss"]
    return last if finished or not require_summary else None


def default_draw(mode):
    path = os.path.join(results, f"{mode}.jsonl") if seed == "1337" else os.path.join(results, "seeds", f"{mode}-seed{seed}.jsonl")
    return final_val(path) if os.path.exists(path) else None


ref_vals = {r: default_draw(r) for r in refs}
for r, v in ref_vals.items():
    if v is None:
        sys.exit(f"no run of reference {r} at seed {seed}")

def draws_of(mode):
    """{rounding seed: final validation loss} of every draw of a mode."""
    draws = {}
    for path in glob.glob(os.path.join(draw_dir, f"{mode}-seed{seed}-round*.jsonl")):
        v = final_val(path, require_summary=True)
        if v is not None:
            draws[int(re.search(r"-round(\d+)\.jsonl$", path).group(1))] = v
    if default_draw(mode) is not None:
        draws[int(seed)] = default_draw(mode)
    return draws


all_draws = {m: draws_of(m) for m in modes}
# "within 2 %" (the QFT goal's margin) is given against the first reference only.
print("| mode | draws | " + " | ".join(f"vs {r}: mean | sd | standard error | range" for r in refs) +
      " | within 2 % of " + refs[0] + " |")
print("|---|---|" + "---|---|---|---|" * len(refs) + "---|")
for m in modes:
    vals = [all_draws[m][k] for k in sorted(all_draws[m])]
    cells = []
    for r in refs:
        d = [100.0 * (v / ref_vals[r] - 1.0) for v in vals]
        n = len(d)
        mean = sum(d) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else float("nan")
        cells.append(f"**{mean:+.2f}** | {sd:.2f} | {sd / math.sqrt(n):.2f} | {min(d):+.2f} to {max(d):+.2f}")
    within = sum(1 for v in vals if 100.0 * (v / ref_vals[refs[0]] - 1.0) <= 2.0)
    print(f"| {m} | {len(vals)} | " + " | ".join(cells) + f" | {within} of {len(vals)} |")
print()
keys = sorted(set(k for d in all_draws.values() for k in d))
print("| mode | " + " | ".join(f"rounding seed {k}" for k in keys) + " |")
print("|---|" + "---|" * len(keys))
for m in modes:
    print(f"| {m} | " + " | ".join(f"{all_draws[m][k]:.4f}" if k in all_draws[m] else "-" for k in keys) + " |")
for r in refs:
    print(f"\n{r} at seed {seed}: {ref_vals[r]:.4f}")
