#!/usr/bin/env python3
"""Summary table of scripts/llama-results.sh runs: final validation loss of
each mode, its ratio to the fp32-adamw baseline, bytes per parameter of the
model states and training speed, read from the runs' JSONL logs and console
output. Usage: summarize-llama-results.py DIR MODE..."""
import json
import re
import sys

out_dir, modes = sys.argv[1], sys.argv[2:]
rows = {}
for m in modes:
    vals, steps = [], []
    with open(f"{out_dir}/{m}.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r.get("summary"):
                continue  # the run's closing summary record
            if "val_loss" in r:
                vals.append((r["step"], r["val_loss"]))
            else:
                steps.append(r)
    text = open(f"{out_dir}/{m}.txt", encoding="utf-8", errors="replace").read()
    bpp = re.search(r"model states\s+([0-9.]+) B/param", text)
    wpp = re.search(r"weights\s+([0-9.]+) B/param", text)
    spp = re.search(r"optimizer states\s+([0-9.]+) B/param", text)
    tok = re.search(r"\(([0-9.]+) training tokens/s\)", text)
    rows[m] = dict(val=vals[-1][1], step=vals[-1][0], first=vals[0][1], bpp=bpp.group(1) if bpp else "?",
                   w=wpp.group(1) if wpp else "?", s=spp.group(1) if spp else "?", tok=tok.group(1) if tok else "?")
base = rows.get("fp32-adamw", {}).get("val")
print("| mode | final val loss | vs fp32-adamw | weights B/param | optimizer states B/param | weights + states B/param | with fp32 gradients B/param | training tokens/s |")
print("|---|---|---|---|---|---|---|---|")
for m in modes:
    r = rows[m]
    ratio = f"{100.0 * (r['val'] / base - 1.0):+.2f}%" if base else "-"
    ws = f"{float(r['w']) + float(r['s']):.3f}" if r['w'] != "?" and r['s'] != "?" else "?"
    print(f"| {m} | {r['val']:.4f} (step {r['step']}, from {r['first']:.3f}) | {ratio} | {r['w']} | {r['s']} | {ws} | {r['bpp']} | {r['tok']} |")
