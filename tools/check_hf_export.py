#!/usr/bin/env python3
"""Checks a model exported by `llama_train --export-hf DIR` with Hugging Face
transformers (a development check: transformers and torch are never
dependencies of lowbit, its tests or its main job).

Loads DIR with transformers' LlamaForCausalLM in float32 (an export with
--export-4bit: its 4-bit layers through bitsandbytes, which computes in
the config's bnb_4bit_compute_dtype, on the CPU) and computes the
validation loss the trainer reports for a byte-level run on a text corpus:
the mean next-byte cross-entropy over `--windows` windows of `--seq` bytes
taken back to back from the start of the held-out last tenth of the corpus
(llama_train's split and windows: --eval-batches x --batch [x --grad-accum]
windows; the default 8 x 16 = 128). Prints both figures when --expect (the
trainer's "validation loss") is given and exits 1 if they differ by more
than --tolerance (relative).

usage: check_hf_export.py DIR [--data FILE] [--seq 128] [--windows 128]
                              [--expect LOSS] [--tolerance 1e-4]
"""
import argparse
import json
import pathlib
import sys

import torch
import transformers


def main() -> int:
    here = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--data", default=str(here / "examples/llama/data/tinyshakespeare.txt"))
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument("--expect", type=float)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()

    ids = list(pathlib.Path(a.data).read_bytes())
    n_val = int(len(ids) * 0.1)  # llama_train holds out the last tenth
    val = ids[len(ids) - n_val:]
    n_windows = (len(val) - 1) // a.seq
    config = json.loads((pathlib.Path(a.dir) / "config.json").read_text())
    if "quantization_config" in config:  # --export-4bit: bitsandbytes 4-bit layers (needs bitsandbytes, accelerate)
        model = transformers.LlamaForCausalLM.from_pretrained(a.dir, device_map="cpu")
    else:
        model = transformers.LlamaForCausalLM.from_pretrained(a.dir, torch_dtype=torch.float32)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(a.windows):
            o = (i % n_windows) * a.seq
            x = torch.tensor([val[o:o + a.seq]])
            y = torch.tensor([val[o + 1:o + a.seq + 1]])
            logits = model(input_ids=x).logits.double()
            total += torch.nn.functional.cross_entropy(logits[0], y[0]).item()
    loss = total / a.windows
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: {a.dir}: "
          f"validation loss {loss:.6f} over {a.windows} windows of {a.seq}")
    if a.expect is not None:
        rel = abs(loss - a.expect) / a.expect
        print(f"llama_train reported {a.expect:.6f}: relative difference {rel:.2e} (tolerance {a.tolerance:g})")
        return 0 if rel <= a.tolerance else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
