"""RunConfig's loss overrides, EMA decay and mining layers, and what the CPU preset changes."""
import pytest

from fastep.config import ConfigError
from fastep.zoo.step.config import LossConfig
from fastep.zoo.step.run_config import PRESETS, resolve_run_config


def test_paper_preset_keeps_the_paper_losses():
    run = resolve_run_config("paper")
    assert run.loss == {} and run.ema == 0.999 and run.mining_layers is None
    assert run.loss_config() == LossConfig.preset("ours_v3")
    assert run.loss_config().lambda_pixel == 0.0 and run.loss_config().lambda_texture == 0.0


def test_loss_overrides_apply_on_top_of_the_approach():
    run = resolve_run_config("paper", {"loss.lambda_pixel": 3.0, "approach": "bicycle_v1"})
    cfg = run.loss_config()
    assert cfg.lambda_pixel == 3.0 and cfg.z_kl and cfg.vae  # bicycle's flags survive
    with pytest.raises(ConfigError, match="lambda_bogus"):
        resolve_run_config("paper", {"loss.lambda_bogus": 1})
    with pytest.raises(ConfigError, match="lambda_pixel"):
        resolve_run_config("paper", {"loss.lambda_pixel": -1})
    with pytest.raises(ConfigError, match="ema"):
        resolve_run_config("paper", {"ema": 1.5})
    with pytest.raises(ConfigError, match="mining_layers"):
        resolve_run_config("paper", {"mining_layers": []})


def test_cpu_preset_documents_its_loss_deviations():
    run = resolve_run_config("cpu")
    cfg = run.loss_config()
    # every loss deviation of the CPU preset is a named LossConfig field
    for key in PRESETS["cpu"].get("loss", {}):
        assert hasattr(LossConfig(), key)
    assert cfg.dir_recon and cfg.d_dir  # the approach's terms are unchanged


def test_optimizer_overrides_reach_the_training_step():
    from fastep.zoo.step.config import OptimConfig
    from fastep.zoo.step.pipeline import _configs

    paper = resolve_run_config("paper")
    assert paper.optim == {} and paper.optim_config() == OptimConfig()
    run = resolve_run_config("paper", {"optim.lr_ge": 3e-3, "optim.betas": [0.5, 0.99], "device": "cpu"})
    assert run.optim_config().lr_ge == 3e-3 and run.optim_config().betas == (0.5, 0.99)
    assert run.optim_config().lr_d == OptimConfig().lr_d
    _, _, train_cfg = _configs(run, "3", "cpu", 1.0)
    assert train_cfg.optim.lr_ge == 3e-3 and train_cfg.optim.betas == (0.5, 0.99)
    with pytest.raises(ConfigError, match="lr_bogus"):
        resolve_run_config("paper", {"optim.lr_bogus": 1})
    with pytest.raises(ConfigError, match="lr_ge"):
        resolve_run_config("paper", {"optim.lr_ge": -1})
