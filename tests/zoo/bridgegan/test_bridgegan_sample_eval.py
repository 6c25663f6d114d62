"""BridgeGAN inference, ``fastep sample`` edits and the evaluation's metrics (CPU, tiny):

* a trained tiny checkpoint loads through ``fastep.zoo.load`` as a BridgeModel; label-based and
  reference-based edits give images of the right shape; the edit targets are the written ones;
* ``fastep sample`` writes a grid for ``--set`` and for ``--ref --attrs``; bad input (unknown
  attribute, two values in one group, missing attribute file, missing checkpoint) is one line
  on stderr and exit status 1;
* the evaluation's accuracies, with a stand-in oracle that reads labels written into the pixels:
  a model that produces the target scores 1 on the target and on the kept groups, a model that
  returns its input scores 0 on the target; the edit plan changes exactly one group.
"""
import math
import os

import pytest
import torch

from fastep import zoo
from fastep.cli import main
from fastep.train.outputs import save_image_grid
from fastep.zoo.bridgegan import builtin_space
from fastep.zoo.bridgegan.evaluate import GROUPS, _circ_err_deg, _circ_spread_deg, evaluate_model, plan_edits
from fastep.zoo.bridgegan.inference import BridgeModel
from fastep.zoo.bridgegan.pipeline import run_training
from fastep.zoo.bridgegan.run_config import resolve_run_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MODEL = dict(resolution=16, n_attrs=15, noise_dim=4, style_ch=4, g_nf=4, g_n_down=2, g_max_nf=8,
                  spade_hidden=4, m_nf=4, e_nf=4, e_n_res=1, d_nf=4, d_n_down=2, d_max_nf=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("bgs") / "run"
    run = resolve_run_config("cpu", {"out": str(out), "kimg": 0.008, "batch": 2, "n_critic": 2, "n_train": 8,
                                     "n_val": 4, "eval": False, "progress": False, "device": "cpu",
                                     "image_every": 0, **{f"model.{k}": v for k, v in TINY_MODEL.items()}})
    run_training(run)
    data = out / "data" / os.listdir(out / "data")[0] / "val"
    imgs = sorted(str(data / f) for f in os.listdir(data))
    return out / "final.pt", imgs


def test_load_and_edit(trained):
    ckpt, imgs = trained
    m = zoo.load(ckpt)
    assert isinstance(m, BridgeModel) and m.system == "bridgegan" and m.resolution == 16
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    y = m.predict_labels(x)
    m.space.validate(y)
    out = m.edit_labels(x, {"palette": "pastel"})
    assert out.shape == (3, 3, 16, 16) and out.abs().max() <= 1
    y_t = m.target_from_edits(y, {"palette": "pastel"})
    assert (y_t[:, m.space.index("pastel")] == 1).all()
    assert torch.equal(y_t[:, m.space.slice("texture")], y[:, m.space.slice("texture")])
    ref = torch.rand(1, 3, 16, 16) * 2 - 1
    assert m.edit_reference(x, ref, ["texture"]).shape == (3, 3, 16, 16)
    y_r = m.predict_labels(ref).expand(3, -1)
    y_t = m.target_from_reference(y, y_r, ["texture"])
    assert torch.equal(y_t[:, m.space.slice("texture")], y_r[:, m.space.slice("texture")])
    assert torch.equal(y_t[:, m.space.slice("palette")], y[:, m.space.slice("palette")])
    with pytest.raises(ValueError, match="16 x 16"):
        m.edit_labels(torch.zeros(1, 3, 32, 32), {"palette": "pastel"})


def test_sample_cli_edits_and_errors(trained, tmp_path, capsys):
    ckpt, imgs = trained
    out = tmp_path / "lem.png"
    assert main(["sample", str(ckpt), "--input", *imgs[:2], "--set", "palette=pastel", "-n", "2",
                 "--out", str(out)]) == 0
    assert out.is_file()
    out2 = tmp_path / "rem.png"
    assert main(["sample", str(ckpt), "--input", *imgs[:2], "--ref", imgs[2], "--attrs", "texture",
                 "--out", str(out2)]) == 0
    assert out2.is_file()
    # an attribute file in CelebA's format gives the inputs' labels
    space = builtin_space()
    af = tmp_path / "attrs.txt"
    rows = []
    for p in imgs[:2]:
        vals = ["-1"] * len(space)
        for g in space.groups:
            vals[space.slice(g).start] = "1"
        rows.append(os.path.basename(p) + " " + " ".join(vals))
    af.write_text(f"{len(rows)}\n" + " ".join(space.names) + "\n" + "\n".join(rows) + "\n")
    assert main(["sample", str(ckpt), "--input", *imgs[:2], "--set", "texture=dots", "--attr-file", str(af),
                 "--out", str(tmp_path / "f.png")]) == 0
    capsys.readouterr()
    bad = [
        (["--set", "colour=red"], "unknown attribute group 'colour'"),
        (["--set", "palette=pastel", "--set", "palette=dark"], "two values of group 'palette'"),
        (["--set", "palette=nope"], "unknown value 'nope'"),
        (["--ref", imgs[2], "--attrs", "shape"], "unknown attribute group 'shape'"),
        (["--ref", imgs[2]], "--ref and --attrs go together"),
        (["--set", "palette=pastel", "--attr-file", str(tmp_path / "none.txt")], "does not exist"),
    ]
    for extra, match in bad:
        rc = main(["sample", str(ckpt), "--input", imgs[0], "--out", str(tmp_path / "x.png"), *extra])
        err = capsys.readouterr().err
        assert rc == 1 and match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    rc = main(["sample", str(tmp_path / "missing.pt"), "--input", imgs[0], "--set", "palette=pastel",
               "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 1 and "missing.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- metrics

class _Val:
    """A validation set of 12 images whose labels and hue are written into their pixels."""

    def __init__(self, n=12, seed=0):
        space = builtin_space()
        g = torch.Generator().manual_seed(seed)
        self.labels = space.sample_targets(space.encode({"palette": space.groups["palette"][0],
                                                          "gradient": space.groups["gradient"][0],
                                                          "texture": space.groups["texture"][0]})[None].repeat(n, 1),
                                           3, generator=g)
        self.hue = torch.rand(n, generator=g)
        self.space = space

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": _encode(self.space, self.labels[i:i + 1], self.hue[i:i + 1])[0]}


def _encode(space, y, hue):
    """Images in [-1, 1] whose pixel (0, 0) holds the three group values and pixel (1, 1) the hue."""
    x = torch.zeros(y.shape[0], 3, 16, 16)
    dec = space.decode(y)
    for c, grp in enumerate(GROUPS):
        x[:, c, 0, 0] = dec[grp].float() / 10
    x[:, 0, 1, 1] = hue
    return x


class _Oracle:
    def predict(self, x):
        out = {grp: (x[:, c, 0, 0] * 10).round().long() for c, grp in enumerate(GROUPS)}
        out["hue"] = x[:, 0, 1, 1].remainder(1.0)
        out["features"] = x.flatten(1)[:, :8] + 0.01 * torch.arange(8.0)
        return out


class _FakeModel:
    """Writes the target labels into the output (``perfect``) or returns the input."""

    def __init__(self, perfect):
        from fastep.zoo.bridgegan import BridgeConfig

        self.space, self.perfect, self.resolution = builtin_space(), perfect, 16
        self.cfg = BridgeConfig(resolution=16, n_attrs=15, noise_dim=4)

    def lem(self, x, y_s, y_t, r=None):
        if not self.perfect:
            return x
        return _encode(self.space, y_t, (r[:, 0] * 0.1).remainder(1.0))

    def rem(self, x, y_s, ref, y_t):
        return _encode(self.space, y_t, ref[:, 0, 1, 1]) if self.perfect else x


def test_metrics_on_a_perfect_and_an_identity_model():
    val, oracle = _Val(), _Oracle()
    good = evaluate_model(_FakeModel(True), val, oracle, n=12, n_div=3, n_r=4)
    same = evaluate_model(_FakeModel(False), val, oracle, n=12, n_div=3, n_r=4)
    for kind in ("lem", "rem"):
        assert good[kind]["target_acc"]["all"] == 1.0 and good[kind]["keep_acc"]["all"] == 1.0
        assert same[kind]["target_acc"]["all"] == 0.0 and same[kind]["keep_acc"]["all"] == 1.0
    assert good["rem"]["hue_err_deg"] < 1e-4 < same["rem"]["hue_err_deg"]
    assert same["lem"]["hue_spread_deg"] < 1e-3 < good["lem"]["hue_spread_deg"]
    assert good["chance"] == {"palette": 1 / 6, "gradient": 1 / 4, "texture": 1 / 5}


def test_edit_plan_changes_one_group_and_references_differ():
    val = _Val(30, seed=1)
    space = val.space
    plan = plan_edits(space, val.labels, 20, seed=0)
    dec, dec_t = space.decode(val.labels), space.decode(plan["y_lab"])
    for i in range(20):
        grp = GROUPS[int(plan["group"][i])]
        for g in GROUPS:
            assert (dec_t[g][i] != dec[g][i]) == (g == grp)
        assert dec[grp][int(plan["ref"][i])] != dec[grp][i]
    assert torch.equal(plan["ref"], plan_edits(space, val.labels, 20, seed=0)["ref"])


def test_circular_helpers():
    assert float(_circ_err_deg(torch.tensor([0.95]), torch.tensor([0.05]))) == pytest.approx(36.0)
    assert _circ_spread_deg(torch.full((5,), 0.3)) == pytest.approx(0.0, abs=1e-3)
    assert _circ_spread_deg(torch.tensor([0.0, 0.5])) > 100
