import time, torch, lowbit
from lowbit.quantized import quantize
from lowbit.gemm import dequant_linear, dequant_linear_backward_input
torch.manual_seed(0)
x = torch.randn(2048, 128); w = torch.randn(352, 128)
wq = quantize(w, "int8", block_size=256)
a = torch.randn(2048,128); b = torch.randn(128,128)
def t(f, n=50):
    f(); s=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-s)/n*1e3
alone = t(lambda: dequant_linear(x, wq))
torchmm = t(lambda: torch.nn.functional.linear(x, w))
def inter():
    a @ b
    dequant_linear(x, wq)
both = t(inter)
tm = t(lambda: a @ b)
print("lowbit alone %.3f ms  torch linear %.3f ms  small torch %.3f ms  interleaved %.3f ms -> lowbit part %.3f" % (alone, torchmm, tm, both, both-tm))
