"""How well stage 1's mined triplets, and the encoder trained on them, see each style factor.

    python benchmarks/stage1_mining_probe.py [--n 800] [--epochs 20] [--out stage1_probe.json]

On the built-in set (32 x 32, the CPU preset's size), for the CPU preset's mining and for the
paper's (``paper_mining``: Gram of B, furthest negatives), it reports:

* the share of mined positives (near set) and negatives that have the anchor's palette, gradient
  and texture (chance is about 1/6, 1/4 and 1/5);
* after stage 1 (the preset's epochs), what a small MLP reads from E's 8-d code on the validation
  split, per factor, against the same MLP on a randomly initialised E.

Everything is seeded; the JSON goes to ``--out`` and a table to stdout.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from fastep.data.builtin import sample_params
from fastep.eval.oracle import oracle_targets
from fastep.zoo.step import stage1 as s1
from fastep.zoo.step.nets import build_models
from fastep.zoo.step.run_config import resolve_run_config

FACTORS = ("palette", "gradient", "texture")


def agreement(idx: torch.Tensor, factors) -> dict:
    return {k: float((v[idx] == v[:, None]).float().mean()) for k, v in factors.items()}


def code_probe(E, train, val, seed: int = 0, steps: int = 1500) -> dict:
    """Validation accuracy of a 64-unit MLP on E's standardised codes, per factor."""
    with torch.no_grad():
        ztr, zva = E(train.images), E(val.images)
    mu, sd = ztr.mean(0), ztr.std(0) + 1e-6
    a, b = (ztr - mu) / sd, (zva - mu) / sd
    out = {}
    for k in FACTORS:
        y = train.factors[k]
        torch.manual_seed(seed)
        head = torch.nn.Sequential(torch.nn.Linear(a.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, int(y.max()) + 1))
        opt = torch.optim.Adam(head.parameters(), lr=3e-3)
        for _ in range(steps):
            loss = F.cross_entropy(head(a), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out[k] = float((head(b).argmax(1) == val.factors[k]).float().mean())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=800, help="training images (default: the CPU preset's 800)")
    p.add_argument("--epochs", type=int, default=None, help="stage-1 epochs (default: the CPU preset's)")
    p.add_argument("--out", default="stage1_probe.json")
    a = p.parse_args(argv)
    train = oracle_targets([sample_params(0, "train", i) for i in range(a.n)], 32)
    val = oracle_targets([sample_params(0, "val", i) for i in range(200)], 32)
    factors = {k: train.factors[k] for k in FACTORS}
    res = {}
    for name, over in (("cpu preset", {}), ("paper_mining", {"stage1.mining_features": "gram", "stage1.negatives": "far"})):
        run = resolve_run_config("cpu", {**over, **({"stage1_epochs": a.epochs} if a.epochs else {})})
        cfg = run.stage1_config("random")
        t0 = time.perf_counter()
        nb = s1.mine_triplets_from_images(train.images, cfg, "cpu")
        mine_s = time.perf_counter() - t0
        models = build_models(run.model, "cpu", seed=run.seed)
        if "random E" not in res:
            models.E.eval()
            res["random E"] = {"code_probe": code_probe(models.E, train, val)}
            models.E.train()
        t0 = time.perf_counter()
        s1.train_encoder_stage1(models.E, train.images, nb, cfg, "cpu", progress=False)
        models.E.eval()
        res[name] = {"positives": agreement(nb.near_idx, factors), "negatives": agreement(nb.far_idx, factors),
                     "code_probe": code_probe(models.E, train, val), "mine_s": mine_s,
                     "train_s": time.perf_counter() - t0, "stage1": cfg.to_dict()}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print("| mining | positives share palette / gradient / texture | negatives share | E's code: palette / gradient / texture |")
    print("|---|---|---|---|")
    for name, r in res.items():
        fmt = lambda d: " / ".join(f"{d[k]:.2f}" for k in FACTORS) if d else "-"
        print(f"| {name} | {fmt(r.get('positives'))} | {fmt(r.get('negatives'))} | {fmt(r['code_probe'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
