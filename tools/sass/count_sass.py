#!/usr/bin/env python3
"""Counts the SASS instructions of probe_kernel in an nvdisasm listing.

usage: count_sass.py LISTING [--loop]
  without --loop: every instruction of the kernel but NOPs, EXIT and BRA
  (the encode probe is straight-line code);
  with --loop: the instructions of the kernel's largest loop (the span
  loop of the step probe), from its label to its backward branch.
"""
import re
import sys

text = open(sys.argv[1]).read()
start = text.find('.text._Z12probe_kernel')
if start < 0:
    sys.exit('no probe_kernel in ' + sys.argv[1])
body = text[start:]
end = body.find('//---------------------', 10)
if end > 0:
    body = body[:end]
lines = body.splitlines()
instr = re.compile(r'\s*/\*([0-9a-f]{4,})\*/\s*(@!?U?P\w+\s+)?([A-Z0-9_.]+)')
rows = [(int(m.group(1), 16), m.group(3)) for m in map(instr.match, lines) if m]
if '--loop' not in sys.argv:
    ops = [op for _, op in rows if not op.startswith(('NOP', 'EXIT', 'BRA'))]
    print(len(ops))
    sys.exit(0)
labels, pending = {}, None
for line in lines:
    m = re.match(r'^\s*\.(L_x_\d+):', line)
    if m:
        pending = m.group(1)
        continue
    m = instr.match(line)
    if m and pending:
        labels[pending] = int(m.group(1), 16)
        pending = None
best = 0
for line in lines:
    m, b = instr.match(line), re.search(r'BRA\s+(?:`\()?\.?(L_x_\d+)', line)
    if m and b and b.group(1) in labels and labels[b.group(1)] < int(m.group(1), 16):
        lo, hi = labels[b.group(1)], int(m.group(1), 16)
        best = max(best, sum(1 for a, _ in rows if lo <= a <= hi))
print(best)
