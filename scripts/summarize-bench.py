#!/usr/bin/env python3
# scripts/summarize-bench.py
# Reads Google Benchmark JSON files (--benchmark_out_format=json) written by
# lowbit's bench_* binaries and prints a markdown table per file: one row per
# benchmark with its GB/s and its figure against the copy ceiling measured in
# the same binary (`copy_ratio` for the CPU bench, `pct_of_copy` for the CUDA
# one). With --pivot, quantize and dequantize rows of the same
# format/scales/dtype/size are put side by side (the layout used in
# docs/PERFORMANCE.md). When the JSON holds repetition aggregates, the median
# rows are shown. With --merge, several files (runs of the same binary) make
# one table: for a benchmark present in more than one, the row whose run had
# the highest cpu_util (the least disturbed by other load; CPU bench only) is
# kept and the source file is named. Failed benchmarks are listed as such,
# and the exit status is 1 if any failed. Standard library only (runs on the
# GPU machine as is).
import argparse
import json
import sys

# A CPU row whose run or copy ceiling had cpu_util under this lost cores to
# other load: its GB/s and copy ratio describe the machine's load, not the code.
DISTURBED = 0.85


def load_rows(path):
    with open(path) as f:
        data = json.load(f)
    runs = data.get("benchmarks", [])
    has_aggregates = any(r.get("run_type") == "aggregate" for r in runs)
    rows, failed = [], []
    for r in runs:
        if r.get("error_occurred"):
            failed.append((r.get("run_name", r.get("name", "?")), r.get("error_message", "")))
            continue
        if has_aggregates:
            if r.get("run_type") != "aggregate" or r.get("aggregate_name") != "median":
                continue
        elif r.get("run_type", "iteration") != "iteration":
            continue
        rows.append(r)
    return data.get("context", {}), rows, failed


def split_name(r):
    """'quantize/nf4/f32scale/bf16/n:16777216/real_time' -> ('quantize/nf4/f32scale/bf16', 'n:16777216')."""
    name = r.get("run_name") or r.get("name", "?")
    parts = [p for p in name.split("/") if p not in ("real_time", "manual_time")]
    args = [p for p in parts if ":" in p]
    base = [p for p in parts if ":" not in p]
    return "/".join(base), " ".join(args)


def fmt(x, digits=2):
    if x is None:
        return "-"
    return f"{x:.{digits}f}"


def time_str(r):
    t = r.get("real_time")
    unit = r.get("time_unit", "ns")
    return "-" if t is None else f"{t:.3g} {unit}"


def ceiling(r):
    """(label, value) of the copy comparison counter present in this row."""
    if "pct_of_copy" in r:
        return "% of copy", r["pct_of_copy"]
    if "copy_ratio" in r:
        return "copy ratio", r["copy_ratio"]
    return None, None


def gbps(r):
    if "GBps" in r:
        return r["GBps"]
    if "bytes_per_second" in r:
        return r["bytes_per_second"] / 1e9
    return None


def context_line(ctx):
    keys = ["date", "host_name", "num_cpus", "gpu_name", "gpu_sm_count", "gpu_l2_bytes", "cuda_driver_version",
            "cuda_runtime_version", "lowbit_threads", "lowbit_block_size", "library_build_type"]
    return ", ".join(f"{k}={ctx[k]}" for k in keys if k in ctx)


def flat_table(rows):
    label = next((ceiling(r)[0] for r in rows if ceiling(r)[0]), "vs copy")
    digits = 1 if label == "% of copy" else 3
    util = any("cpu_util" in r for r in rows)
    head = f"| benchmark | size | time/iter | GB/s | {label} | copy GB/s |"
    rule = "|---|---|---|---:|---:|---:|"
    if util:
        head += " cpu util (run / copy) |"
        rule += "---:|"
    out = [head, rule]
    for r in rows:
        base, args = split_name(r)
        line = (f"| {base} | {args} | {time_str(r)} | {fmt(gbps(r))} | {fmt(ceiling(r)[1], digits)} | "
                f"{fmt(r.get('copy_GBps'))} |")
        if util:
            us = [r.get("cpu_util"), r.get("copy_cpu_util")]
            flag = " disturbed" if any(u is not None and u < DISTURBED for u in us) else ""
            line += f" {fmt(r.get('cpu_util'))} / {fmt(r.get('copy_cpu_util'))}{flag} |"
        out.append(line)
    return out


def pivot_table(rows):
    label = next((ceiling(r)[0] for r in rows if ceiling(r)[0]), "vs copy")
    digits = 1 if label == "% of copy" else 3
    groups, order = {}, []
    other = []
    for r in rows:
        base, args = split_name(r)
        op, _, rest = base.partition("/")
        if op not in ("quantize", "dequantize") or not rest:
            other.append(r)
            continue
        key = (rest, args)
        if key not in groups:
            groups[key] = {}
            order.append(key)
        groups[key][op] = r
    util = any("cpu_util" in r for r in rows)
    out = [f"| format/scales/dtype | size | quantize GB/s | quantize {label} | dequantize GB/s | "
           f"dequantize {label} | copy GB/s |" + (" cpu util (q / dq / copy) |" if util else ""),
           "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if util else "")]
    for key in order:
        q, d = groups[key].get("quantize"), groups[key].get("dequantize")
        cells = []
        for r in (q, d):
            cells += ["-", "-"] if r is None else [fmt(gbps(r)), fmt(ceiling(r)[1], digits)]
        # both directions move the same traffic, so they share one copy ceiling
        copies = sorted({fmt(r.get("copy_GBps")) for r in (q, d) if r is not None})
        cells.append(" / ".join(copies))
        if util:
            any_r = q if q is not None else d
            utils = [r.get(k) for r in (q, d) if r is not None for k in ("cpu_util", "copy_cpu_util")]
            flag = " disturbed" if any(u is not None and u < DISTURBED for u in utils) else ""
            cells.append(" / ".join(fmt(r.get("cpu_util")) if r is not None else "-" for r in (q, d)) +
                         " / " + fmt(any_r.get("copy_cpu_util")) + flag)
        out.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    if other:
        out += ["", "| other benchmark | size | time/iter | GB/s |" + (" cpu util |" if util else ""),
                "|---|---|---|---:|" + ("---:|" if util else "")]
        for r in other:
            base, args = split_name(r)
            out.append(f"| {base} | {args} | {time_str(r)} | {fmt(gbps(r))} |" +
                       (f" {fmt(r.get('cpu_util'))} |" if util else ""))
    return out


def merged(paths):
    """One row per benchmark name across files: the one with the highest cpu_util."""
    best, order, failed_all, sources = {}, [], [], {}
    for path in paths:
        _, rows, failed = load_rows(path)
        failed_all += failed
        for r in rows:
            key = r.get("run_name") or r.get("name")
            if key not in best:
                order.append(key)
            elif r.get("cpu_util", 0.0) <= best[key].get("cpu_util", 0.0):
                continue
            best[key] = r
            sources[key] = path
    return [best[k] for k in order], failed_all, sources


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("json", nargs="+", help="Google Benchmark JSON output files")
    ap.add_argument("--pivot", action="store_true", help="quantize and dequantize side by side")
    ap.add_argument("--merge", action="store_true",
                    help="one table from all files, keeping each benchmark's least disturbed row")
    args = ap.parse_args()
    any_failed = False
    if args.merge:
        rows, failed, sources = merged(args.json)
        print("### merged: " + ", ".join(args.json) + "\n")
        table = pivot_table(rows) if args.pivot else flat_table(rows)
        print("\n".join(table))
        print("\nrow sources:")
        for path in args.json:
            names = [k for k, v in sources.items() if v == path]
            print(f"- {path}: {len(names)} rows")
        for name, msg in failed:
            print(f"- FAILED {name}: {msg}")
        return 1 if failed else 0
    for path in args.json:
        try:
            ctx, rows, failed = load_rows(path)
        except (OSError, ValueError) as e:
            print(f"### {path}\n\ncould not read: {e}\n")
            any_failed = True
            continue
        print(f"### {path}\n")
        line = context_line(ctx)
        if line:
            print(line + "\n")
        table = pivot_table(rows) if args.pivot else flat_table(rows)
        print("\n".join(table))
        if failed:
            any_failed = True
            print("\nFAILED benchmarks:")
            for name, msg in failed:
                print(f"- {name}: {msg}")
        print()
    return 1 if any_failed else 0


if __name__ == "__main__":
    sys.exit(main())
