"""BridgeGAN probes at acceptance test 18's settings (32 px ``cpu`` nets, 600 training images,
seed 0, one thread): where the label code stops reaching the output.

``frozen-classifier``: D/C's classifier is first trained alone on real images (300 Adam updates
of 32 images, BCE), then frozen; G, M and E are trained with ``rec * L_rec + cls * BCE(C(LEM
output), target)`` only, the target moving the palette alone.  Every 50 updates the style oracle
(an independent network trained on real images) reads the palette of 120 validation LEM outputs
with a new palette: ``target`` is its agreement with the target, ``src`` with the source.

``run``: test 18's training run (:func:`fastep.zoo.bridgegan.pipeline.run_training`) with
``--set JSON`` overrides of the run config and optionally ``--warmup K`` classifier-only updates
before it, then the evaluation (:func:`fastep.zoo.bridgegan.evaluate.evaluate_model`).

    python benchmarks/bridgegan_probes.py frozen-classifier --code-norm plain
    python benchmarks/bridgegan_probes.py run --set '{"model.code_norm": "sample", "lr": 1e-3}' --warmup 300
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def _oracle(root):
    from fastep.eval.oracle import OracleConfig, load_or_train_oracle
    return load_or_train_oracle(root, OracleConfig(n_images=384, steps=200, batch_size=32, width=8, lr=4e-3))


def _warm_classifier(D, X, Y, steps: int, seed: int = 5) -> float:
    from fastep.zoo.bridgegan.losses import attribute_bce
    opt = torch.optim.Adam(D.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for _ in range(steps):
        i = torch.randint(len(X), (32,), generator=g)
        loss = attribute_bce(D(X[i])[1], Y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def _images(ds):
    return torch.stack([ds[i]["image"] for i in range(len(ds))]), ds.labels


def frozen_classifier(a) -> None:
    from fastep.zoo.bridgegan.attributes import BuiltinAttributes
    from fastep.zoo.bridgegan.losses import attribute_bce as bce, make_codes
    from fastep.zoo.bridgegan.networks import build_networks
    from fastep.zoo.bridgegan.pipeline import prepare_data
    from fastep.zoo.bridgegan.run_config import resolve_run_config

    run = resolve_run_config("cpu", {"out": a.out, "n_train": 600, "n_val": 120, "model.code_norm": a.code_norm})
    ds, root = prepare_data(run)
    X, Y = _images(ds)
    XV, YV = _images(BuiltinAttributes(root, "val"))
    oracle = _oracle(root)
    space, pal = ds.space, ds.space.slice("palette")
    nets = build_networks(run.model)
    G, M, E, D = nets["G"], nets["M"], nets["E"], nets["D"]
    _warm_classifier(D, X, Y, 300)
    with torch.no_grad():
        acc = float((D(XV)[1][:, pal].argmax(1) == YV[:, pal].argmax(1)).float().mean())
    print(f"classifier on validation palettes: {acc:.3f}", flush=True)
    D.requires_grad_(False)
    opt = torch.optim.Adam([p for m in (G, M, E) for p in m.parameters()], a.lr, betas=(0.5, 0.999))

    def evaluate():
        g = torch.Generator().manual_seed(0)
        ys = YV[:120]
        yt = space.sample_targets(ys, 1, generator=g, groups=["palette"])
        r = torch.randn(len(ys), run.model.noise_dim, generator=g)
        with torch.no_grad():
            c = make_codes(E, M, XV[:120], ys, XV[:120], yt, r)
            p = oracle.predict(G(XV[:120], c.S_rand))["palette"]
        return {"target": round(float((p == yt[:, pal].argmax(1)).float().mean()), 3),
                "src": round(float((p == ys[:, pal].argmax(1)).float().mean()), 3)}

    t0 = time.time()
    print("update 0", evaluate(), flush=True)
    for s in range(1, a.steps + 1):
        i = torch.randint(len(X), (a.batch,))
        xs, ys = X[i], Y[i]
        yt = space.sample_targets(ys, 1, groups=["palette"])
        c = make_codes(E, M, xs, ys, xs, yt, torch.randn(a.batch, run.model.noise_dim))
        fake, rec = G(torch.cat([xs, xs]), torch.cat([c.S_rand, c.S0_rand])).split(a.batch)
        loss = a.cls * bce(D(fake)[1], yt) + a.rec * (rec - xs).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s % 50 == 0:
            print(f"update {s}", evaluate(), f"{time.time() - t0:.0f} s", flush=True)


def learning_run(a) -> None:
    from fastep import zoo
    from fastep.zoo.bridgegan import pipeline as P
    from fastep.zoo.bridgegan.attributes import BuiltinAttributes
    from fastep.zoo.bridgegan.evaluate import evaluate_model
    from fastep.zoo.bridgegan.run_config import resolve_run_config

    over = {"out": a.out, "n_critic": 1, "n_train": 600, "n_val": 120, "kimg": a.steps * 8 / 1000, "log_every": 25,
            "ckpt_every": 0.0, "image_every": 0.0, "eval": False, "progress": False}
    over.update(json.loads(a.set))
    run = resolve_run_config("cpu", over)
    if a.warmup:
        build = P.build_step

        def build_warm(run, device, n_images):
            step = build(run, device, n_images)
            X, Y = _images(P.prepare_data(run)[0])
            print(f"classifier warm-up: BCE {_warm_classifier(step.D, X, Y, a.warmup):.3f}", flush=True)
            return step
        P.build_step = build_warm
    summary = P.run_training(run)
    logged = [h for h in summary["stages"]["train"]["history"] if "losses" in h]
    root = P.builtin_root(run)
    rep = evaluate_model(zoo.load(run.out + "/final.pt", "cpu"), BuiltinAttributes(root, "val"), _oracle(root),
                         n=120, n_div=2, n_r=4)

    def rec(e):
        return sum(x["losses"]["rec"] for x in e) / len(e)
    print(json.dumps({"set": json.loads(a.set), "warmup": a.warmup, "rec_first": rec(logged[:2]),
                      "rec_last": rec(logged[-2:]), "cls_fake_last": logged[-1]["losses"]["cls"],
                      "cls_real_last": logged[-1]["losses"]["cls_real"],
                      "lem": rep["lem"]["target_acc"], "lem_keep": rep["lem"]["keep_acc"],
                      "rem": rep["rem"]["target_acc"], "rem_keep": rep["rem"]["keep_acc"]}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("frozen-classifier")
    f.add_argument("--code-norm", default="plain", choices=("affine", "plain", "sample", "none"))
    f.add_argument("--steps", type=int, default=600)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--cls", type=float, default=50.0)
    f.add_argument("--rec", type=float, default=100.0)
    f.add_argument("--batch", type=int, default=8)
    r = sub.add_parser("run")
    r.add_argument("--set", default="{}", help="run-config overrides as JSON")
    r.add_argument("--warmup", type=int, default=0, help="classifier-only updates before the run")
    r.add_argument("--steps", type=int, default=300)
    for p in (f, r):
        p.add_argument("--out", default="runs/bridgegan-probe")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    (frozen_classifier if a.cmd == "frozen-classifier" else learning_run)(a)


if __name__ == "__main__":
    main()
