# torch float32 (oneDNN) on the trainer's three products at M = 2048 tokens,
# the shapes of bench_dequant_gemm_cpu's tiny_* rows: forward X W^T, input
# gradient dY W, weight gradient dY^T X; 1 and 2 threads; median of 7 timed
# batches. Dev-only comparison: /tmp/venv/bin/python torch_products.py
import statistics, time
import torch

M = 2048
for threads in (1, 2):
    torch.set_num_threads(threads)
    for n, k in ((128, 128), (352, 128), (128, 352)):
        x, w, dy = torch.randn(M, k), torch.randn(n, k), torch.randn(M, n)
        ops = {"fwd": lambda: x @ w.T, "bwd": lambda: dy @ w, "wgrad": lambda: dy.T @ x}
        for name, op in ops.items():
            for _ in range(5):
                op()
            iters = 40
            batches = []
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(iters):
                    op()
                batches.append((time.perf_counter() - t0) / iters)
            dt = statistics.median(batches)
            print(f"threads {threads} {name} {n}x{k}: {dt * 1e6:.0f} us {2 * M * n * k / dt / 1e9:.1f} GFLOP/s")
