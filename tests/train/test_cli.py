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
    o = _opts("--device", "cpu")
    assert o.stages == ("1", "2", "3", "mapper") and o.data == "builtin" and o.approach == "ours_v3"
    from fastep.zoo.step.run_config import PRESETS

    cpu = PRESETS["cpu"]
    assert o.batch == cpu["batch"] and o.model.resolution == cpu["model"]["resolution"]  # the cpu preset
    assert o.compile is False
    o = _opts("--stage", "all", "--kimg", "7")
    assert o.stage3_kimg == 7 and o.stage2_kimg == pytest.approx(2.5)
    o = _opts("--stage", "2", "--kimg", "3", "--width", "8,16,4", "--no-compile", "--resume", "--device", "cpu")
    assert o.stages == ("2",) and o.stage2_kimg == 3 and o.stage3_kimg == cpu["stage3_kimg"]
    assert (o.model.g_nf, o.model.e_nf, o.model.d_nf) == (8, 16, 4) and o.compile is False and o.resume
    o = _opts("--preset", "paper", "--set", "model.z_dim=16", "--set", "lr_decay_start=0.5", "--batch", "2")
    assert o.model.z_dim == 16 and o.lr_decay_start == 0.5 and o.batch == 2 and o.model.resolution == 256
    assert o.compile is True and o.stage3_kimg == 700.0
    with pytest.raises(ValueError, match="--width"):
        _opts("--width", "8,8")
    with pytest.raises(ValueError, match="--kimg"):
        _opts("--kimg", "0")


@pytest.mark.parametrize("argv, words", [
    (["--system", "nope"], ["unknown system 'nope'", "valid: step"]),
    (["--preset", "huge"], ["unknown StEP run preset 'huge'", "paper, cpu"]),
    (["--set", "batchsize=2"], ["unknown StEP run config key 'batchsize'", "batch"]),
    (["--set", "model.gnf=2"], ["unknown StEP model config key 'gnf'", "g_nf"]),
    (["--set", "model.g_nf=wide"], ["g_nf must be an int"]),
    (["--approach", "ours_v9"], ["unknown approach 'ours_v9'", "ours_v3"]),
    (["--set", "batch"], ["--set: expected KEY=VALUE"]),
])
def test_bad_configuration_is_one_line_naming_it(argv, words, capsys, tmp_path):
    assert main(["train", "--out", str(tmp_path / "o"), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fastep train: error: "), err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "o").exists()  # nothing was started


def test_train_help_states_the_cpu_preset_values(capsys):
    from fastep.zoo.step.run_config import PRESETS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    cpu = PRESETS["cpu"]
    assert f"cpu {cpu['model']['resolution']})" in text
    assert f"cpu {cpu['batch']})" in text
    assert f"cpu {cpu['stage2_kimg']:g} and {cpu['stage3_kimg']:g})" in text


def test_print_config_shows_the_resolved_run_and_exits(capsys, tmp_path):
    assert main(["train", "--out", str(tmp_path / "o"), "--preset", "cpu", "--set", "model.g_nf=16",
                 "--batch", "3", "--set", "model.g_nf=24", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    from fastep.zoo.step.run_config import PRESETS

    cpu = PRESETS["cpu"]
    assert cfg["batch"] == 3 and cfg["model"]["g_nf"] == 24 and cfg["model"]["resolution"] == cpu["model"]["resolution"]
    assert cfg["stage3_kimg"] == cpu["stage3_kimg"] and not (tmp_path / "o").exists()
    assert cfg["loss"]["lambda_pixel"] == cpu["loss"]["lambda_pixel"]
    from fastep.zoo.step.run_config import RunConfig, resolve_run_config

    again = resolve_run_config("cpu", {k: v for k, v in cfg.items()})
    assert isinstance(again, RunConfig) and json.loads(again.to_json()) == cfg  # the printed config reproduces the run


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
    # every checkpoint records the whole run config: the one home of the loop settings
    from fastep.config import from_dict
    from fastep.zoo.step.run_config import RunConfig

    for ck in (s1, s2, load_checkpoint(out / "final.pt")):
        assert json.loads(json.dumps(ck.configs["run"])) == m["config"]
        run = from_dict(RunConfig, ck.configs["run"])
        assert (run.stage2_kimg, run.log_every, run.keep, run.workers, run.out) == (0.004, 2, 3, 0, str(out))
        assert not {"out_dir", "num_workers", "log_every", "keep_ckpts"} & set(ck.configs["train"])
    for k, v in s1.weights["E"].items():  # stage 2 keeps the pre-trained E bit-identical
        assert torch.equal(v, s2.weights["E"][k]), k
