"""BridgeGAN's CPU learning run (acceptance test 18): a short run of the ``cpu`` preset at
32 x 32 with one critic update per generator update, then the evaluation judged by a small
style oracle trained on real built-in images.

The thresholds are the acceptance criteria themselves: the reconstruction loss falls by at
least 30 %, the LEM outputs show the target palette at least twice as often as chance and keep
the untouched groups at least 70 % of the time.  The run does not reach the translation
thresholds yet (README, "BridgeGAN": the model learns to reconstruct but copies the source's
palette), so the test is an expected failure, strict: it fails the suite once the model learns,
so that the marker is then removed and the thresholds stay pinned.
"""
import pytest
import torch

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

#: generator updates of the run (one critic update each, batch 8)
STEPS = 300


def _mean_rec(entries):
    return sum(e["losses"]["rec"] for e in entries) / len(entries)


def _learning_run(tmp_path):
    from fastep import zoo
    from fastep.eval.oracle import OracleConfig, load_or_train_oracle
    from fastep.zoo.bridgegan.attributes import BuiltinAttributes
    from fastep.zoo.bridgegan.evaluate import evaluate_model
    from fastep.zoo.bridgegan.pipeline import builtin_root, run_training
    from fastep.zoo.bridgegan.run_config import resolve_run_config

    run = resolve_run_config("cpu", {"out": str(tmp_path / "run"), "n_critic": 1, "n_train": 600, "n_val": 120,
                                     "kimg": STEPS * 8 / 1000, "log_every": 25, "ckpt_every": 0.0,
                                     "image_every": 0.0, "eval": False, "progress": False})
    summary = run_training(run)
    logged = [h for h in summary["stages"]["train"]["history"] if "losses" in h]
    root = builtin_root(run)
    oracle = load_or_train_oracle(root, OracleConfig(n_images=384, steps=200, batch_size=32, width=8, lr=4e-3))
    report = evaluate_model(zoo.load(run.out + "/final.pt", "cpu"), BuiltinAttributes(root, "val"), oracle,
                            n=120, n_div=2, n_r=4)
    return logged, oracle, report


@pytest.mark.xfail(strict=True, reason="the CPU run reconstructs but does not translate yet (README, BridgeGAN)")
def test_cpu_learning_run_reconstructs_and_translates(tmp_path):
    torch.manual_seed(0)
    logged, oracle, report = _learning_run(tmp_path)
    assert oracle.held_out["palette"] >= 0.9  # the judge itself reads palettes
    first, last = _mean_rec(logged[:2]), _mean_rec(logged[-2:])
    print("rec", first, "->", last, "report", report["lem"], report["rem"]["target_acc"])
    assert last <= 0.7 * first, f"L_rec fell only from {first:.3f} to {last:.3f}"
    lem = report["lem"]
    assert lem["keep_acc"]["all"] >= 0.7, lem
    assert lem["target_acc"]["palette"] >= 2 * report["chance"]["palette"], lem
