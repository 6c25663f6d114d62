"""The evaluation protocol end to end on a tiny generated set (trains two approaches briefly)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastep.eval.evaluate import EvalConfig, evaluate_checkpoint
from fastep.eval.oracle import OracleConfig
from fastep.eval.protocol import run_protocol


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol")
    cfg = EvalConfig(n_inputs=4, n_styles=3, lpips_weights="random", batch_size=16,
                     oracle_config=OracleConfig(n_images=256, steps=20, batch_size=32, width=8))
    report = run_protocol(out, ("ours_v3", "bicycle_v1"), device="cpu", eval_cfg=cfg, n_train=24, n_val=8,
                          resolution=32, pipeline_overrides=dict(stage2_kimg=0.008, stage3_kimg=0.008,
                                                                 stage1_epochs=1, mapper_epochs=2, progress=False))
    return out, report


def test_protocol_writes_report_and_table(protocol):
    out, report = protocol
    saved = json.loads((out / "protocol.json").read_text())
    assert set(saved["approaches"]) == {"ours_v3", "bicycle_v1"}
    md = (out / "protocol.md").read_text()
    assert "ours_v3 (final)" in md and "bicycle_v1 (final)" in md and "ours_v3 (E after stage 1)" in md
    for approach, entry in report["approaches"].items():
        final = entry["final"]
        rec, div = final["reconstruction"], final["diversity"]
        assert np.isfinite(rec["psnr"]) and 0 <= rec["lpips"] and np.isfinite(rec["lpips"])
        assert div["n_inputs"] == 4 and div["lpips_diversity"] >= 0
        sc = final["style_capture"]
        for who in ("trained", "random_init"):
            assert 0 <= sc[who]["probe_mean"] <= 1 and 0 <= sc[who]["nn_retrieval"] <= 1
        orc = final["oracle"]
        assert 0 <= orc["headline"]["palette_transfer"] <= 1 and 0 <= orc["headline"]["content_iou"] <= 1
        assert "Style oracle" in md
        assert sc["probe_mean_gain"] == pytest.approx(sc["trained"]["probe_mean"] - sc["random_init"]["probe_mean"])


def test_protocol_figures_are_real_images(protocol):
    out, report = protocol
    for approach, entry in report["approaches"].items():
        for name, path in entry["figures"].items():
            img = np.asarray(Image.open(path).convert("RGB"))
            assert img.shape[0] > 32 and img.shape[1] > 32, (approach, name)
            assert img.std() > 1.0, f"{approach} {name} is blank"
        assert entry["lpips_curve"]["points"], approach
        assert (out / approach / "figures" / "val_lpips.png").is_file()


def test_evaluate_stage1_checkpoint_skips_generator_metrics(protocol):
    out, report = protocol
    r = report["approaches"]["ours_v3"]["after_stage1"]
    assert "reconstruction" not in r and "style_capture" in r


def test_evaluate_rejects_bad_config():
    with pytest.raises(ValueError, match="style_source"):
        EvalConfig(style_source="nope")
    with pytest.raises(ValueError, match="n_styles"):
        EvalConfig(n_styles=1)


def test_sample_api(protocol, tmp_path):
    from fastep.eval import sample as S

    out, _ = protocol
    files = sorted((out / "data" / "val").glob("*.png"))[:3]
    path = S.transfer(out / "ours_v3" / "final.pt", files[:2], files[1:3], tmp_path / "t.png",
                      input_half="A", style_half="B")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[:2] == (3 * 34 + 2, 3 * 34 + 2) and img.std() > 1.0
    path = S.sample(out / "ours_v3" / "final.pt", files[:1], tmp_path / "s.png", n=4, input_half="A")
    assert np.asarray(Image.open(path)).std() > 1.0
    with pytest.raises(ValueError, match="styles"):
        S.transfer(out / "ours_v3" / "final.pt", files[:1], [], tmp_path / "x.png")
