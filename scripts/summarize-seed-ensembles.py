#!/usr/bin/env python3
"""Ensembles of llama_train runs at one seed (docs/RESULTS.md, "Run-to-run
spread at the default seed"): runs that share --seed (data order, initial
weights) and differ only in what cannot change a mode's expected result:
other rounding draws (--rounding-seed) for the stochastically rounded
modes, or a peak learning rate moved by a few parts in a million (--lr) for
the modes that draw no random bits. Prints, per mode, the final validation
losses of its runs with their mean, standard deviation and standard error;
then each mode's distance from the first reference in points (per cent) of
the reference's loss: single runs against the reference's logged run (the
tables' reading), and ensemble mean against ensemble mean (standard errors
combined).

Usage: summarize-seed-ensembles.py SEED -- MODE... [-- REFERENCE...]
Run logs: docs/results/rounding-seeds/<mode>-seed<SEED>-round<R>.jsonl and
docs/results/lr-perturbed/<mode>-seed<SEED>-lrpert<K>.jsonl; each
ensemble also holds the mode's logged run (for seed 1337 the run of the
same arithmetic, docs/results/2026-11-28-no-fma/<mode>.jsonl: the
ensembles predate the CPU products' fused multiply-adds;
docs/results/seeds/<mode>-seed<SEED>.jsonl otherwise).
References default to fp32-adamw and fp32-lion. A log without its summary
line (a run still going) is left out."""
import glob
import json
import math
import os
import re
import sys

results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "results")
args = sys.argv[1:]
seed = args[0]
rest = args[2:]
modes, refs = (rest[: rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else (rest, ["fp32-adamw", "fp32-lion"])


def final_val(path, require_summary):
    last, finished = None, False
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line still being written
                return None
            finished = finished or bool(r.get("summary"))
            if "val_loss" in r and "step" in r and not r.get("summary"):
                last = r["val_loss"]
    return last if finished or not require_summary else None


def logged_run(mode):
    # The main table's logs from before summary lines existed are complete.
    path = os.path.join(results, "2026-11-28-no-fma", f"{mode}.jsonl") if seed == "1337" else os.path.join(results, "seeds", f"{mode}-seed{seed}.jsonl")
    return final_val(path, False) if os.path.exists(path) else None


def ensemble(mode):
    """[(label, final validation loss)]: the logged run first."""
    runs = [("logged", logged_run(mode))] if logged_run(mode) is not None else []
    for sub, key in (("rounding-seeds", "round"), ("lr-perturbed", "lrpert")):
        found = []
        for path in glob.glob(os.path.join(results, sub, f"{mode}-seed{seed}-{key}*.jsonl")):
            v = final_val(path, True)
            if v is not None:
                found.append((int(re.search(rf"-{key}(\d+)\.jsonl$", path).group(1)), v))
        runs += [(f"{key}{k}", v) for k, v in sorted(found)]
    return runs


def stats(xs):
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return mean, sd, sd / math.sqrt(n)


every = {m: ensemble(m) for m in refs + modes}
for m, runs in every.items():
    if not runs:
        sys.exit(f"no run of {m} at seed {seed}")

print(f"Seed {seed}: final validation loss of each run")
print()
print("| mode | runs | how they differ | mean | sd | standard error | lowest | highest |")
print("|---|---|---|---|---|---|---|---|")
for m, runs in every.items():
    vals = [v for _, v in runs]
    mean, sd, se = stats(vals)
    how = "rounding seeds" if any(l.startswith("round") for l, _ in runs) else "peak lr x (1 + k 1e-6)" if len(runs) > 1 else "-"
    print(f"| {m} | {len(vals)} | {how} | {mean:.4f} | {sd:.4f} | {se:.4f} | {min(vals):.4f} | {max(vals):.4f} |")
print()
print("| mode | final validation loss of each run |")
print("|---|---|")
for m, runs in every.items():
    print(f"| {m} | " + ", ".join(f"{l} {v:.4f}" for l, v in runs) + " |")
print()
for ref in refs:
    rvals = [v for _, v in every[ref]]
    rlog = every[ref][0][1]
    rmean, _, rse = stats(rvals)
    print(f"Distance from {ref}, points of its validation loss")
    print()
    print(f"| mode | each run against {ref}'s logged run: mean | range | within 2 % | ensemble mean against {ref}'s ensemble mean | standard error |")
    print("|---|---|---|---|---|---|")
    for m in modes + [r for r in refs if r != ref]:
        vals = [v for _, v in every[m]]
        d = [100.0 * (v / rlog - 1.0) for v in vals]
        mean, _, se = stats(vals)
        dist = 100.0 * (mean / rmean - 1.0)
        dse = 100.0 * math.sqrt(se ** 2 + (mean / rmean) ** 2 * rse ** 2) / rmean if len(vals) > 1 and len(rvals) > 1 else float("nan")
        within = sum(1 for x in d if x <= 2.0)
        print(f"| {m} | {sum(d) / len(d):+.2f} | {min(d):+.2f} to {max(d):+.2f} | {within} of {len(d)} | **{dist:+.2f}** | {dse:.2f} |")
    print()
