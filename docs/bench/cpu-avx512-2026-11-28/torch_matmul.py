# torch float32 matmul (oneDNN) on the trainer and 4096 shapes, 1 and 2 threads; dev-only comparison
# run: /tmp/venv/bin/python torch_matmul.py (torch 2.15)
import torch,time
for t in (1,2):
    torch.set_num_threads(t)
    for n,k in ((4096,4096),(128,128),(352,128),(128,352)):
        m=2048
        a=torch.randn(m,k); w=torch.randn(n,k)
        for _ in range(3): a@w.T
        it=max(3,int(2e10/(2*m*n*k)))
        t0=time.perf_counter()
        for _ in range(it): a@w.T
        dt=(time.perf_counter()-t0)/it
        print(t,n,k,f"{dt*1e6:.0f} us {2*m*n*k/dt/1e9:.1f} GFLOP/s")
