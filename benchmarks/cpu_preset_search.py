"""One configuration of the CPU-preset search: the whole main job with given sizes and loss weights,
then the oracle metrics of the result (see the README's CPU preset section for the log).

    python benchmarks/cpu_preset_search.py --out /tmp/search/r1 --res 32 --batch 16 \
        --lambda-pixel 10 --lambda-rec 0 --kimg2 4 --kimg3 12

Runs on fastep's own pipeline (stages 1, 2, 3, mapper); only the loss/optimiser settings are
overridden, so what is measured here is what ``fastep train`` would do with those settings.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--g-nf", type=int, default=8)
    p.add_argument("--e-nf", type=int, default=16)
    p.add_argument("--d-nf", type=int, default=8)
    p.add_argument("--n-res", type=int, default=1)
    p.add_argument("--d-scales", type=int, default=2)
    p.add_argument("--g-n-down", type=int, default=3)
    p.add_argument("--kimg2", type=float, default=4.0)
    p.add_argument("--kimg3", type=float, default=12.0)
    p.add_argument("--stage1-epochs", type=int, default=3)
    p.add_argument("--stage1-images", type=int, default=None)
    p.add_argument("--mapper-epochs", type=int, default=60)
    p.add_argument("--lambda-rec", type=float, default=0.02)
    p.add_argument("--lambda-pixel", type=float, default=0.0)
    p.add_argument("--lambda-gan", type=float, default=1.0)
    p.add_argument("--pw", type=str, default=None, help="perceptual layer weights, comma-separated")
    p.add_argument("--layers", type=str, default=None, help="perceptual layers, comma-separated")
    p.add_argument("--distance", default=None)
    p.add_argument("--lr-ge", type=float, default=1e-3)
    p.add_argument("--lr-d", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--approach", default="ours_v3")
    p.add_argument("--decay", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    from fastep.zoo.step import pipeline as pl

    loss_over = {"lambda_rec": a.lambda_rec, "lambda_pixel": a.lambda_pixel, "lambda_gan": a.lambda_gan,
                 "perceptual_backbone": "random"}
    if a.pw:
        loss_over["perceptual_weights"] = tuple(float(x) for x in a.pw.split(","))
    if a.layers:
        loss_over["perceptual_layers"] = tuple(a.layers.split(","))
    if a.distance:
        loss_over["perceptual_distance"] = a.distance
    orig = pl._configs

    def configs(opts, stage, device, kimg):
        m, l, t = orig(opts, stage, device, kimg)
        l = dataclasses.replace(l, **loss_over)
        t = dataclasses.replace(t, optim=dataclasses.replace(t.optim, lr_ge=a.lr_ge, lr_d=a.lr_d), ema=a.ema)
        return m, l, t

    pl._configs = configs
    from fastep.zoo.step.run_config import resolve_run_config

    opts = resolve_run_config("cpu", dict(
        out=a.out, approach=a.approach, device="cpu", batch=a.batch,
        stage2_kimg=a.kimg2, stage3_kimg=a.kimg3, n_train=a.n_train, n_val=a.n_val,
        stage1_epochs=a.stage1_epochs, mapper_epochs=a.mapper_epochs, ckpt_every=max(a.kimg2, a.kimg3),
        image_every=max(a.kimg2, a.kimg3) / 2, log_every=50, workers=0, seed=a.seed, vgg_weights="random",
        model=dict(resolution=a.res, g_nf=a.g_nf, e_nf=a.e_nf, d_nf=a.d_nf, n_res=a.n_res, d_scales=a.d_scales,
                   g_n_down=a.g_n_down),
        progress=False, **({} if a.decay is None else {"lr_decay_start": a.decay})))
    t0 = time.perf_counter()
    summary = pl.run_pipeline(opts)
    wall = time.perf_counter() - t0
    rec = {"args": vars(a), "wall_s": wall,
           "stage_s": {k: v.get("wall_s", v.get("train_s")) for k, v in summary["stages"].items()}}
    for k in ("2", "3"):
        st = summary["stages"].get(k, {})
        if st.get("wall_s"):
            rec[f"stage{k}_img_s"] = 1000 * st["kimg"] / st["wall_s"]
    try:
        import shutil

        from fastep.eval.oracle import oracle_path, quick_report

        cached = Path(a.out).parent / f"oracle-r{a.res}-v{a.n_val}.pt"
        if cached.is_file() and not oracle_path(summary["data"]).is_file():
            shutil.copy(cached, oracle_path(summary["data"]))

        for ema in (True, False):
            rec["oracle" if ema else "oracle_raw"] = quick_report(Path(a.out) / "final.pt", summary["data"], ema=ema)
        if not cached.is_file():
            shutil.copy(oracle_path(summary["data"]), cached)
    except ImportError:
        pass
    Path(a.out, "search.json").write_text(json.dumps(rec, indent=1, default=str))
    print(json.dumps(rec, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
