"""Behaviour pinned by files the code before the zoo refactor wrote (tests/fixtures/v0/README.md):
its checkpoints still load and give the same outputs, a resumed run continues them, and the same
tiny CPU stage-3 run and the same training steps give the same losses."""
import json
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tests: see tests/conftest.py

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0"
RECORDED = json.loads((FIXTURES / "recorded.json").read_text())
SMALL = dict(g_nf=4, e_nf=4, d_nf=4, g_max_nf=8, n_res=1, d_layers=2, d_scales=2, z_dim=4)
# Float32 training on another CPU may round a reduction differently; a change of behaviour
# (a loss term, the RNG order, the schedule) moves these numbers by orders of magnitude more.
REL = 2e-5


def _same_losses(got, want, where, rel=REL):
    assert set(want) <= set(got), where
    for k in set(got) - set(want):  # terms added since (e.g. the pixel L1) are off by default
        assert got[k] == 0.0, f"{where}: new term {k} = {got[k]}"
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=rel, abs=1e-9), f"{where}: {k}"


def test_format0_checkpoint_loads_through_the_zoo_with_the_same_outputs():
    from fastep import zoo
    from fastep.train.checkpoint import load_checkpoint

    ck = load_checkpoint(FIXTURES / "final.pt")
    assert ck.system == "step" and ck.stage == "3" and ck.weights["mapper"] is not None
    assert set(ck.weights) == {"G", "E", "D", "G_ema", "E_ema", "mapper"}
    rec = RECORDED["final_pt"]
    tr = zoo.load(FIXTURES / "final.pt")
    g = torch.Generator().manual_seed(2)
    A = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    B = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    assert torch.allclose(tr.encode(B), torch.tensor(rec["codes"]), rtol=REL, atol=1e-7)
    y = tr.translate(A, B).double()
    assert float(y.sum()) == pytest.approx(rec["translate_sum"], rel=REL)
    assert float(y.abs().sum()) == pytest.approx(rec["translate_abs"], rel=REL)
    assert torch.allclose(tr.sample_codes(3, seed=0, how="mapper"), torch.tensor(rec["mapper_codes"]),
                          rtol=REL, atol=1e-7)
    assert torch.allclose(tr.z_stats["mu"], torch.tensor(rec["mu"]))


@pytest.mark.parametrize("name", ["final.pt", "stage3-00000002.pt"])
def test_format0_train_config_parses_without_its_retired_loop_keys(name):
    """The loop settings left TrainConfig (their one home is the RunConfig); the train configs of
    older checkpoints, which hold them, still parse, and any other unknown key is still refused."""
    from fastep.config import ConfigError
    from fastep.train.checkpoint import load_checkpoint
    from fastep.zoo.step.config import RETIRED_TRAIN_KEYS, TrainConfig

    d = load_checkpoint(FIXTURES / name).configs["train"]
    assert set(RETIRED_TRAIN_KEYS) <= set(d)
    tc = TrainConfig.from_dict(d)
    assert (tc.stage, tc.approach, tc.batch_size, tc.resolution, tc.kimg, tc.seed) == (3, "ours_v3", 4, 16, 0.02, 0)
    assert not any(hasattr(tc, k) for k in RETIRED_TRAIN_KEYS)
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_dict({**d, "bogus": 1})


# ``aligned_convs`` (fastep.nn.aligned) computes the same convolutions with padded channels: exact
# in real arithmetic, so its float32 sums round differently (tested exact in float64 in tests/nn);
# three steps of training carry that to ~4e-5 in the batch-summed KL. The plain networks carry a
# CPU's own rounding the same way: on one machine the recording's bicycle_v1 z_kl at step 3 came
# out 2.2e-5 off, so they get the same 1e-4 (a change of behaviour moves it by far more).
@pytest.mark.parametrize("aligned, rel", [(False, 1e-4), (True, 1e-4)], ids=["plain", "aligned_convs"])
@pytest.mark.parametrize("approach", ["bicycle_v2", "ours_v1", "bicycle_v1", "ours_v3"])
def test_train_step_losses_match_the_recorded_ones(approach, aligned, rel):
    from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig
    from fastep.zoo.step.train_step import make_train_step

    torch.manual_seed(0)
    tc = TrainConfig(stage=3, approach=approach, batch_size=4, resolution=16, compile=False, amp=False,
                     channels_last=False, seed=0, device="cpu", aligned_convs=aligned)
    step = make_train_step(tc, ModelConfig(resolution=16, **SMALL), "cpu",
                           loss_cfg=LossConfig.preset(approach, perceptual_backbone="random"))
    g = torch.Generator().manual_seed(1)
    for i, want in enumerate(RECORDED[approach]):
        A = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
        B = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
        _same_losses({k: float(v) for k, v in step(A, B).items()}, want, f"{approach} step {i + 1}", rel)


def _run_stage3(out, resume=False):
    from fastep.cli import main

    # the recorded run (tests/fixtures/v0/README.md), through `fastep train`
    # the paper's losses with the CPU speed settings of the recording (the cpu preset's losses changed since)
    args = ["train", "--stage", "3", "--data", str(FIXTURES / "data"), "--out", str(out), "--preset", "paper",
            "--set=compile=false", "--set=amp=false", "--set=channels_last=false", "--set=workers=0",
            "--resolution", "16", "--batch", "4", "--kimg", "0.02", "--ckpt-every", "0.008", "--image-every", "0",
            "--log-every", "1", "--vgg-weights", "random", "--device", "cpu", "--no-progress", "--seed", "0",
            *[f"--set=model.{k}={v}" for k, v in SMALL.items()]]
    assert main(args + (["--resume"] if resume else [])) == 0
    return [e for e in json.loads((out / "stage3" / "metrics.json").read_text())["history"] if "losses" in e]


def test_tiny_cpu_stage3_run_reproduces_the_recorded_losses(tmp_path):
    hist = _run_stage3(tmp_path / "run")
    want = RECORDED["stage3_history"]
    assert [h["step"] for h in hist] == [w["step"] for w in want] == [1, 2, 3, 4, 5]
    for h, w in zip(hist, want):
        assert h["lr_scale"] == pytest.approx(w["lr_scale"], rel=1e-12)
        _same_losses(h["losses"], w["losses"], f"step {w['step']}")


def test_resume_from_a_format0_checkpoint_continues_the_recorded_run(tmp_path):
    out = tmp_path / "run"
    (out / "stage3" / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / "stage3-00000002.pt", out / "stage3" / "checkpoints")
    hist = _run_stage3(out, resume=True)
    want = RECORDED["stage3_history"]
    assert [h["step"] for h in hist] == [1, 2, 3, 4, 5]  # steps 1-2 come from the checkpoint's history
    for h, w in zip(hist[2:], want[2:]):
        _same_losses(h["losses"], w["losses"], f"resumed step {w['step']}")
