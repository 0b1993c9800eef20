"""Time of lowbit's torch optimizer state_dict() / load_state_dict() and of
torch.save on the dictionary, for AdamW8bit over 24 float32 tensors of
4096 x 1024 (100.7 M parameters) after one step. Development measurement
(needs torch; lowbit from PYTHONPATH / LOWBIT_C_LIBRARY or pip install).

    PYTHONPATH=python LOWBIT_C_LIBRARY=build/capi/liblowbit_c.so python bench/python_state_dict.py
"""

import io
import time

import torch

import lowbit


def main(repeats=3):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4096, 1024)) for _ in range(24)]
    opt = lowbit.AdamW8bit(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p) * 0.01
    opt.step()
    n = sum(p.numel() for p in params)
    for _ in range(repeats):
        t = time.perf_counter()
        image = opt.lowbit.state_image()
        t_image = time.perf_counter() - t
        t = time.perf_counter()
        sd = opt.state_dict()
        t_sd = time.perf_counter() - t
        t = time.perf_counter()
        opt.load_state_dict(sd)
        t_load = time.perf_counter() - t
        buf = io.BytesIO()
        t = time.perf_counter()
        torch.save(sd, buf)
        t_save = time.perf_counter() - t
        print("%d parameters: state image %.1f MiB in %.3f s; state_dict() %.3f s; load_state_dict() %.3f s; "
              "torch.save %.3f s (%.1f MiB)" % (n, len(image) / 2 ** 20, t_image, t_sd, t_load, t_save,
                                               len(buf.getvalue()) / 2 ** 20), flush=True)


if __name__ == "__main__":
    main()
