"""`fastep train` CLI: argument handling and tiny end-to-end runs (32 px, a few steps)."""
import json

import pytest
import torch

from fastep.cli import build_parser, main
from fastep.train.checkpoint import load_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tests: see tests/conftest.py


def _opts(*argv):
    from fastep.train.cli import options_from_args

    return options_from_args(build_parser().parse_args(["train", *argv]))


def test_options_from_args():
    o = _opts()
    assert o.stages == ("1", "2", "3", "mapper") and o.data == "builtin" and o.approach == "ours_v3"
    o = _opts("--stage", "all", "--kimg", "7")
    assert o.stage3_kimg == 7 and o.stage2_kimg == pytest.approx(2.5)
    o = _opts("--stage", "2", "--kimg", "3", "--width", "8,16,4", "--no-compile", "--resume")
    assert o.stages == ("2",) and o.stage2_kimg == 3 and o.stage3_kimg is None
    assert o.model_overrides == {"g_nf": 8, "e_nf": 16, "d_nf": 4} and o.compile is False and o.resume
    with pytest.raises(ValueError, match="--width"):
        _opts("--width", "8,8")
    with pytest.raises(ValueError, match="--kimg"):
        _opts("--kimg", "0")


def test_cli_reports_bad_data_folder(tmp_path, capsys):
    rc = main(["train", "--stage", "3", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
               "--no-progress"])
    assert rc == 1 and "--data" in capsys.readouterr().err


TINY = ["--resolution", "32", "--batch", "2", "--n-train", "24", "--n-val", "4", "--width", "8,8,8",
        "--log-every", "2", "--no-progress", "--device", "cpu"]


def test_cli_smoke_stage3_mapper_resume(tmp_path, one_thread, capsys):
    from fastep.train.checkpoint import load_models

    out = str(tmp_path / "run")
    rc = main(["train", "--stage", "3", "--out", out, "--kimg", "0.008", "--ckpt-every", "0.004",
               "--image-every", "0.008", *TINY])
    assert rc == 0, capsys.readouterr().err
    ckpts = sorted(p.name for p in (tmp_path / "run" / "stage3" / "checkpoints").glob("*.pt"))
    assert ckpts == ["stage3-00000002.pt", "stage3-00000004.pt"]
    assert sorted(p.name for p in (tmp_path / "run" / "stage3" / "samples").glob("*.png")) == [
        "stage3_00000000.png", "stage3_00000004.png"]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["stages"]["3"]["steps"] == 4 and m["stages"]["3"]["final_losses"]["loss_g"] > 0

    rc = main(["train", "--stage", "mapper", "--out", out, "--mapper-epochs", "3", *TINY])
    assert rc == 0, capsys.readouterr().err
    G, E, cfg, extras = load_models(tmp_path / "run" / "final.pt", "cpu")
    assert extras["mapper"] is not None and extras["z_stats"]["mu"].shape == (cfg.z_dim,)
    assert (tmp_path / "run" / "mapper" / "samples.png").is_file()
    with torch.no_grad():
        z = extras["mapper"](torch.randn(3, extras["mapper"].noise_dim))
        assert G(torch.zeros(3, 3, 32, 32), z).shape == (3, 3, 32, 32)

    # --resume on a finished stage does nothing
    capsys.readouterr()
    rc = main(["train", "--stage", "3", "--out", out, "--kimg", "0.008", "--resume", *TINY])
    assert rc == 0 and "already done" in capsys.readouterr().err


def test_cli_all_stages(tmp_path, one_thread, capsys):
    out = tmp_path / "all"
    rc = main(["train", "--out", str(out), "--stage2-kimg", "0.004", "--stage3-kimg", "0.004",
               "--stage1-epochs", "1", "--mapper-epochs", "2", *TINY])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["stages"]) == {"1", "2", "3", "mapper"}
    for f in ("stage1/final.pt", "stage2/final.pt", "stage3/final.pt", "final.pt", "mapper/samples.png"):
        assert (out / f).is_file(), f
    s1 = load_checkpoint(out / "stage1" / "final.pt")
    s2 = load_checkpoint(out / "stage2" / "final.pt")
    assert (s1.stage, s2.stage) == ("1", "2")
    for k, v in s1.weights["E"].items():  # stage 2 keeps the pre-trained E bit-identical
        assert torch.equal(v, s2.weights["E"][k]), k
