"""`fastep info` and `fastep eval` as a user runs them (in-process through fastep.cli.main)."""
import json

import pytest
import torch

import fastep
from fastep import _ext
from fastep.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _info(capsys):
    assert main(["info"]) == 0
    return capsys.readouterr().out.splitlines()


def _op_line(lines, op):
    hits = [ln for ln in lines if ln.split()[:1] == [op]]
    assert len(hits) == 1, (op, lines)
    return hits[0]


def test_info_reports_versions_and_each_ops_cpu_route(capsys, monkeypatch):
    monkeypatch.delenv("FASTEP_BACKEND", raising=False)
    lines = _info(capsys)
    assert lines[0] == f"fastep {fastep.__version__}"
    assert any(ln.startswith(f"torch {torch.__version__}") for ln in lines)
    ops = sorted({row[0] for row in _ext.route_table(("cpu",))})
    assert len(ops) >= 8
    for op in ops:
        cpu = _op_line(lines, op).split("cpu:")[1].split("cuda:")[0].split()
        expected = {_ext.backend_for(op, "cpu", d) for d in (torch.float32, torch.float16, torch.float64)}
        if len(expected) == 1:
            assert cpu == [expected.pop()], (op, cpu)
        else:
            assert all(b in " ".join(cpu) for b in expected), (op, cpu, expected)
    # the C++ kernels serve mining on CPU when fastep._C is built
    assert ("cpp" if _ext.has_C() else "reference") in _op_line(lines, "mine_neighbours").split("cuda:")[0]


def test_info_shows_a_forced_backend(capsys, monkeypatch):
    monkeypatch.setenv("FASTEP_BACKEND", "mine_neighbours=reference")
    line = _op_line(_info(capsys), "mine_neighbours")
    assert line.split("cpu:")[1].split()[0] == "reference", line


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step stage-3 run of `fastep train` (32 px, narrow nets) and its built-in data."""
    out = tmp_path_factory.mktemp("evalcli") / "run"
    rc = main(["train", "--stage", "3", "--out", str(out), "--kimg", "0.004", "--resolution", "32", "--batch", "2",
               "--n-train", "8", "--n-val", "4", "--width", "8,8,8", "--no-progress", "--device", "cpu",
               "--no-compile"])
    assert rc == 0
    data = next((out / "data").iterdir())
    return out / "stage3" / "final.pt", data


def test_eval_cli_writes_report_with_reconstruction_psnr(trained, tmp_path, capsys):
    from fastep.data import PairedImageDataset
    from fastep.train.checkpoint import load_models

    ckpt, data = trained
    out = tmp_path / "ev" / "eval.json"
    capsys.readouterr()
    rc = main(["eval", str(ckpt), "--data", str(data), "--device", "cpu", "--n-inputs", "2", "--n-styles", "2",
               "--lpips-weights", "random", "--oracle-steps", "20", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert out.is_file() and out.with_suffix(".md").is_file()
    rep = json.loads(out.read_text())
    assert "| model | PSNR |" in printed and f"wrote {out}" in printed
    rec = rep["reconstruction"]
    assert rec["n"] == 4 and 0 <= rec["lpips"] and rep["diversity"]["n_inputs"] == 2
    # PSNR of G(A, E(B)) against B with the EMA networks, by its definition, per image then mean
    G, E, cfg, _ = load_models(ckpt, "cpu", ema=True)
    ds = PairedImageDataset(data, split="val", resolution=cfg.resolution, crop=False, flip=False)
    A = torch.stack([ds[i]["A"] for i in range(len(ds))])
    B = torch.stack([ds[i]["B"] for i in range(len(ds))])
    with torch.no_grad():
        fake = G(A, E(B)).double()
    mse = (fake - B.double()).square().flatten(1).mean(1)
    psnr = (10 * torch.log10(4.0 / mse)).mean().item()
    assert rec["psnr"] == pytest.approx(psnr, abs=1e-4)
    assert "palette transfer" in printed and "content IoU" in printed
    assert 0 <= rep["oracle"]["headline"]["texture_transfer"] <= 1
    assert "style_capture" in rep and 0 <= rep["style_capture"]["trained"]["probe_mean"] <= 1
