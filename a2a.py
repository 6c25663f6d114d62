import os, torch, torch.distributed as dist, torch.multiprocessing as mp, tempfile, datetime
def w(r, ws, f):
    dist.init_process_group("gloo", init_method=f"file://{f}", rank=r, world_size=ws, timeout=datetime.timedelta(seconds=20))
    x = torch.arange(6, dtype=torch.float64) + 10*r
    out = torch.empty(6, dtype=torch.float64)
    try:
        dist.all_to_all_single(out, x, [2,4] if True else None, [2 if r==0 else 4]*2 if False else None)
        print("a2a ok", r, out)
    except Exception as e: print("a2a fail", type(e).__name__, e)
    try:
        from torch.distributed.distributed_c10d import _get_default_store
        st=_get_default_store(); st.set(f"p{r}", "3"); print("store ok", st.get(f"p{r}"))
    except Exception as e: print("store fail", e)
    dist.destroy_process_group()
if __name__ == "__main__":
    f = tempfile.mktemp(); mp.spawn(w, (2, f), nprocs=2)
