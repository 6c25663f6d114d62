"""The CPU-preset search's quick experiment: stage 3 only (G, E, D from scratch) on built-in images
rendered in memory, for a number of steps or seconds, then the style oracle's headline metrics of
the EMA and raw networks (JSON on stdout) and a grid (rows: A, B, G(A, E(B)), G(A, E(B')), B').

    python benchmarks/cpu_preset_stage3.py --root DATA_ROOT --steps 500 --pix 10 --gan 1 --tag f6

DATA_ROOT is a built-in data set (its validation split and cached oracle are used).  The README's
CPU-preset search record lists the runs (f1-f7) made with it.
"""
import argparse, time, json, dataclasses, torch, sys
from fastep.data.builtin import sample_params
from fastep.eval.oracle import oracle_targets, load_or_train_oracle, translation_report
from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig, OptimConfig
from fastep.zoo.step.train_step import make_train_step
p = argparse.ArgumentParser()
p.add_argument("--res", type=int, default=32); p.add_argument("--batch", type=int, default=16)
p.add_argument("--n", type=int, default=1000); p.add_argument("--g", type=int, default=16)
p.add_argument("--e", type=int, default=16); p.add_argument("--d", type=int, default=16)
p.add_argument("--nres", type=int, default=2); p.add_argument("--pix", type=float, default=10)
p.add_argument("--rec", type=float, default=0.0); p.add_argument("--gan", type=float, default=1.0)
p.add_argument("--layers", default=None); p.add_argument("--pw", default=None)
p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--lrd", type=float, default=1e-3)
p.add_argument("--seconds", type=float, default=120); p.add_argument("--ema", type=float, default=0.99)
p.add_argument("--root", required=True, help="a built-in data set (fastep.data.make_builtin_dataset)")
p.add_argument("--tag", default="run"); p.add_argument("--grid-dir", default="."); p.add_argument("--approach", default="ours_v3")
p.add_argument("--act", type=float, default=0.1)
p.add_argument("--steps", type=int, default=0); p.add_argument("--tex", type=float, default=0.0)
a = p.parse_args()
torch.manual_seed(0)
t = oracle_targets([sample_params(0, "train", i) for i in range(a.n)], a.res)
mc = ModelConfig(resolution=a.res, g_nf=a.g, e_nf=a.e, d_nf=a.d, n_res=a.nres, d_scales=2)
lo = dict(lambda_texture=a.tex, lambda_rec=a.rec, lambda_pixel=a.pix, lambda_gan=a.gan, perceptual_backbone="random", perceptual_act_scale=a.act)
if a.layers: lo.update(perceptual_layers=tuple(a.layers.split(",")), perceptual_weights=tuple(float(x) for x in a.pw.split(",")))
lc = LossConfig.preset(a.approach, **lo)
tc = TrainConfig(stage=3, approach=a.approach, batch_size=a.batch, resolution=a.res, compile=False, amp=False,
                 channels_last=False, device="cpu", ema=a.ema, optim=OptimConfig(lr_ge=a.lr, lr_d=a.lrd))
step = make_train_step(tc, mc, "cpu", loss_cfg=lc)
g = torch.Generator().manual_seed(0)
t0 = time.perf_counter(); n = 0; k = 0
while (k < a.steps) if a.steps else (time.perf_counter() - t0 < a.seconds):
    idx = torch.randint(0, a.n, (a.batch,), generator=g)
    out = step(t.outlines[idx], t.images[idx]); n += a.batch; k += 1
dt = time.perf_counter() - t0
oracle = load_or_train_oracle(a.root)
res = {}
for which in ("ema", "raw"):
    G = step.G_ema if which == "ema" else step.G
    E = step.E_ema if which == "ema" else step.E
    with torch.no_grad():
        r = translation_report(G, E, a.root, oracle)
    res[which] = r["headline"]
print(json.dumps({"tag": a.tag, "args": vars(a), "img_s": n / dt, "kimg": n / 1000, "steps": k,
                  "last": {kk: round(float(v), 4) for kk, v in out.items() if float(v) != 0},
                  **{w: {kk: round(v, 3) for kk, v in h.items()} for w, h in res.items()}}), flush=True)
# grid
from torchvision.utils import save_image
v = oracle_targets([sample_params(0, "val", i) for i in range(8)], a.res)
with torch.no_grad():
    G, E = step.G_ema, step.E_ema
    rows = [v.outlines, v.images, G(v.outlines, E(v.images)), G(v.outlines, E(v.images.roll(1, 0))), v.images.roll(1, 0)]
save_image((torch.cat(rows).clamp(-1, 1) + 1) / 2, f"{a.grid_dir}/stage3-{a.tag}.png", nrow=8, padding=1)
