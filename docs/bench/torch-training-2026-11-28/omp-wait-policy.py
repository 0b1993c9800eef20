# The timing behind docs/RESULTS.md's OMP_WAIT_POLICY remark: mean fwd+bwd and step time of
# configurations of bench/compare_torch_training.py (names on stdin), 15 steps after 6 untimed.
# Run from the repository root (it imports bench/compare_torch_training.py).
import sys, time
sys.argv=['x','--steps','30']
sys.path.insert(0,'bench')
import compare_torch_training as c
import torch, transformers
args=c.parse_args()
data=c.Data(args.data,args.batch,args.seq,args.seed,torch)
torch.manual_seed(1); init={k:v.clone() for k,v in c.make_model(torch,transformers).state_dict().items()}
for name in sys.stdin.read().split():
    run=c.Run(name,args,torch,transformers,init)
    def steps(n):
        fb=0; tot=0
        for s in range(n):
            x,y=data.next_batch(); t0=time.perf_counter(); loss=c.loss_of(run.model,torch,x,y); loss.backward(); t1=time.perf_counter(); n_,f=run.clip_factor(); run.optimizer_step(f); t2=time.perf_counter(); fb+=t1-t0; tot+=t2-t0
        return fb/n*1e3, tot/n*1e3
    steps(6)
    print(name, 'fwd+bwd %.1f ms, step %.1f ms' % steps(15), flush=True)
