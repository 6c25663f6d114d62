"""One tiny finished main job (32 x 32, 8-channel nets, a few steps per stage), shared by the
first-run tests of this folder; tests copy it before changing it."""
import shutil
import sys

import pytest

TINY = ["--resolution", "32", "--batch", "2", "--n-train", "24", "--n-val", "4", "--width", "8,8,8",
        "--kimg", "0.008", "--stage2-kimg", "0.004", "--ckpt-every", "0.004", "--log-every", "2",
        "--stage1-epochs", "1", "--mapper-epochs", "2", "--device", "cpu", "--no-compile", "--no-progress"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """(out folder, printed stdout, printed stderr) of ``fastep train`` (all stages + summary)."""
    from fastep.cli import main
    from fastep.eval.evaluate import EvalConfig
    from fastep.eval.oracle import OracleConfig
    from fastep.train import summary

    # the closing evaluation as `fastep eval` runs it, with a quickly trained style oracle
    mp = pytest.MonkeyPatch()
    mp.setattr(summary, "eval_config", lambda w: EvalConfig(
        lpips_weights=w, oracle_config=OracleConfig(n_images=64, steps=4, batch_size=16, width=8)))
    out = tmp_path_factory.mktemp("first") / "run"
    cap_out, cap_err = _Capture(), _Capture()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = cap_out, cap_err
    try:
        rc = main(["train", "--out", str(out), *TINY])
    finally:
        sys.stdout, sys.stderr = old
        mp.undo()
    assert rc == 0, cap_err.text
    return out, cap_out.text, cap_err.text


@pytest.fixture
def run_copy(finished_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished_run[0], dst)
    return dst


class _Capture:
    def __init__(self):
        self.parts = []

    def write(self, s):
        self.parts.append(s)
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return False

    @property
    def text(self):
        return "".join(self.parts)
