"""BridgeGAN's training step and its trainer integration, on tiny nets (CPU, seconds):

* which networks each update changes (critic: D only; generator: G, M, E and not D);
* ``n_critic`` critic updates on ``n_critic`` distinct batches per generator update, the
  generator on the last of them, and the trainer reading ``n_critic x batch`` images per step;
* the latent bank (release-only) moves only the rows of the references it used;
* ``fastep train --system bridgegan``: checkpoints hold every net and both optimisers; an
  interrupted run resumed with ``--resume`` ends bit-identical to an uninterrupted one; a NaN
  loss exits with status 3 and keeps the last good checkpoint.
"""
import dataclasses
import os
import signal

import pytest
import torch

from fastep.cli import main
from fastep.config import ConfigError
from fastep.train.checkpoint import load_checkpoint
from fastep.train.trainer import Trainer
from fastep.zoo.bridgegan import BridgeConfig, build_networks, builtin_space
from fastep.zoo.bridgegan.losses import LossWeights
from fastep.zoo.bridgegan.run_config import PRESETS, resolve_run_config
from fastep.zoo.bridgegan.train_step import BridgeTrainStep

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MODEL = dict(resolution=16, n_attrs=15, noise_dim=4, style_ch=4, g_nf=4, g_n_down=2, g_max_nf=8,
                  spade_hidden=4, m_nf=4, e_nf=4, e_n_res=1, d_nf=4, d_n_down=2, d_max_nf=8)


def _labels(n, seed=0):
    space = builtin_space()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        y = torch.zeros(len(space))
        for grp in space.groups:
            sl = space.slice(grp)
            y[sl.start + int(torch.randint(sl.stop - sl.start, (1,), generator=g))] = 1
        rows.append(y)
    return torch.stack(rows)


def _step(n_critic=5, **kw):
    torch.manual_seed(0)
    nets = build_networks(BridgeConfig(**TINY_MODEL))
    return BridgeTrainStep(nets, LossWeights.preset("paper"), n_critic=n_critic, **kw)


def _snap(m):
    return [p.detach().clone() for p in m.parameters()]


def _changed(before, m):
    return any(not torch.equal(a, p) for a, p in zip(before, m.parameters()))


def test_critic_update_changes_only_d_and_generator_update_not_d():
    st = _step()
    x, y = torch.rand(4, 3, 16, 16) * 2 - 1, _labels(4)
    names = ("G", "M", "E", "D")
    before = {k: _snap(st.networks()[k]) for k in names}
    st.critic_update(x, y, torch.arange(4))
    assert {k for k in names if _changed(before[k], st.networks()[k])} == {"D"}
    before = {k: _snap(st.networks()[k]) for k in names}
    st.opt_d.zero_grad(set_to_none=True)
    st.generator_update(x, y, torch.arange(4))
    assert {k for k in names if _changed(before[k], st.networks()[k])} == {"G", "M", "E"}
    assert all(p.grad is None for p in st.D.parameters())  # D frozen: no gradient accumulated
    assert all(p.requires_grad for p in st.D.parameters())  # and unfrozen afterwards


def test_five_critic_updates_on_five_distinct_batches_then_one_generator_update(monkeypatch):
    st = _step(n_critic=5)
    seen = []
    orig_c, orig_g = st.critic_update, st.generator_update
    monkeypatch.setattr(st, "critic_update", lambda x, y, i: (seen.append(("D", i.tolist())), orig_c(x, y, i))[1])
    monkeypatch.setattr(st, "generator_update", lambda x, y, i: (seen.append(("G", i.tolist())), orig_g(x, y, i))[1])
    x, y, idx = torch.rand(15, 3, 16, 16) * 2 - 1, _labels(15), torch.arange(100, 115)
    out = st(x, y, idx)
    kinds = [k for k, _ in seen]
    assert kinds == ["D"] * 5 + ["G"]
    batches = [tuple(i) for k, i in seen if k == "D"]
    assert len(set(batches)) == 5 and sorted(sum(map(list, batches), [])) == list(range(100, 115))
    assert seen[-1][1] == list(batches[-1])  # the generator update runs on the last critic batch
    assert st.step_count == 1 and st.critic_count == 5 and st.batches_seen == 5
    assert {"loss_d", "gp", "wgan", "cls_real", "loss_g", "adv", "cls", "rec", "cyc1", "cyc2", "ak", "sty",
            "ms"} <= set(out)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.values())
    with pytest.raises(ValueError, match="n_critic x batch"):
        st(x[:14], y[:14])


def test_latent_bank_moves_only_the_references_rows():
    st = _step(n_critic=1, latent_bank=True, n_images=50, generator=torch.Generator().manual_seed(3))
    before = st.bank.r.clone()
    idx = torch.tensor([3, 7, 11, 20])
    st(torch.rand(4, 3, 16, 16) * 2 - 1, _labels(4), idx)
    moved = (st.bank.r != before).any(1).nonzero().flatten().tolist()
    assert moved and set(moved) <= set(idx.tolist())
    assert (st.bank.r[idx].abs() <= 1).all()  # the update is clipped to [-1, 1]
    sd = st.state_dict()
    assert sd["bank"] is not None
    with pytest.raises(ValueError, match="latent_bank"):
        _step(n_critic=1).load_state_dict(sd)


def test_run_presets_and_errors():
    cpu = resolve_run_config("cpu")
    paper = resolve_run_config("paper")
    assert paper.batch == 48 and paper.n_critic == 5 and paper.lr == 2e-4 and (paper.beta1, paper.beta2) == (0.5, 0.999)
    assert paper.model == BridgeConfig.paper() and paper.loss == "paper" and not paper.latent_bank
    assert cpu.model.resolution == 32 and cpu.model.n_attrs == 15 and cpu.images_per_step == cpu.batch * cpu.n_critic
    assert resolve_run_config("paper", {"loss": "code"}).loss_weights() == LossWeights.preset("code")
    assert cpu.loss_weights() == dataclasses.replace(LossWeights.preset("code"), cls=50.0)
    assert resolve_run_config("cpu", {"weights.ak": 3}).loss_weights().ak == 3
    for bad, match in (({"nope": 1}, "unknown BridgeGAN run config key"), ({"loss": "x"}, "loss preset"),
                       ({"weights.zz": 1}, "zz"), ({"model.g_nf": 0}, "g_nf"), ({"batch": 1}, "batch")):
        with pytest.raises((ConfigError, ValueError), match=match):
            resolve_run_config("cpu", bad)
    assert set(PRESETS) == {"paper", "cpu"}


# ----------------------------------------------------------------------------- the trainer

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("bg")


def _args(out, *extra):
    # 6 generator updates of 2 critic batches of 2 images: 24 images per run
    return ["train", "--system", "bridgegan", "--preset", "cpu", "--out", str(out), "--kimg", "0.024",
            "--n-train", "12", "--n-val", "4", "--log-every", "2", "--ckpt-every", "0.008",
            "--image-every", "0", "--no-progress", "--no-eval", "--device", "cpu", "--batch", "2",
            "--set", "n_critic=2", *[f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()], *extra]


def _steps(out):
    folder = os.path.join(out, "train", "checkpoints")
    return sorted(int(f.split("-")[1].split(".")[0]) for f in os.listdir(folder)) if os.path.isdir(folder) else []


def _at_steps(monkeypatch, actions):
    orig = Trainer._row

    def row(self, losses):
        r = orig(self, losses)
        act = actions.get(self.step_idx + 1)
        return act(r) if act is not None else r

    monkeypatch.setattr(Trainer, "_row", row)


def test_train_checkpoints_and_resume_bit_identical(tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_args(a)) == 0
    ck = load_checkpoint(a / "final.pt")
    assert ck.system == "bridgegan" and ck.step == 6 and ck.complete
    assert set(ck.weights) == {"G", "M", "E", "D"}
    assert ck.extras["attributes"]["groups"]["palette"][0] and ck.extras["n_critic"] == 2
    # an interrupted run: SIGTERM during step 3 -> checkpoint at the log interval (step 4), exit 130
    orig = Trainer._row

    def row(self, losses):
        if self.step_idx + 1 == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(self, losses)

    monkeypatch.setattr(Trainer, "_row", row)
    assert main(_args(b)) == 130
    monkeypatch.undo()
    mid = load_checkpoint(b / "train" / "checkpoints" / f"stagetrain-{_steps(b)[-1]:08d}.pt")
    assert mid.step == 4 and not mid.complete
    ts = mid.train_state
    assert {"G", "M", "E", "D", "opt_g", "opt_d"} <= set(ts) and ts["opt_g"]["state"] and ts["opt_d"]["state"]
    assert ts["step"] == 4 and ts["critic_steps"] == 8 and mid.loader["batch_size"] == 4
    assert main(_args(b, "--resume")) == 0
    fa, fb = load_checkpoint(a / "final.pt"), load_checkpoint(b / "final.pt")
    assert fb.step == 6
    for net in ("G", "M", "E", "D"):
        for k, v in fa.weights[net].items():
            assert torch.equal(v, fb.weights[net][k]), f"{net}.{k} differs after resume"
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_nan_loss_exits_3_and_keeps_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "n"

    def nan_first(r):
        r = r.clone()
        r[0] = float("nan")
        return r

    _at_steps(monkeypatch, {5: nan_first})  # checkpoints at steps 2 and 4, NaN found at the check of step 6
    rc = main(_args(out))
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "non-finite loss" in err and "at step 5" in err and "stagetrain-00000004.pt" in err
    assert _steps(out) == [2, 4] and not (out / "final.pt").exists()


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    assert main(_args(tmp_path / "e", "--set", "model.n_attrs=5")) == 1
    err = capsys.readouterr().err
    assert "n_attrs=15" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--system", "bridgegan", "--preset", "cpu", "--set", "nope=1", "--print-config"]) == 1
    assert "unknown BridgeGAN run config key 'nope'" in capsys.readouterr().err
    assert main(["train", "--system", "bridgegan", "--preset", "cpu", "--print-config"]) == 0
    assert '"n_critic": 2' in capsys.readouterr().out
