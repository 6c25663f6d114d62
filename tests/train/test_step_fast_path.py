"""The step's fast-path switches: exact conv rewrites, compile scope (per network or whole step),
combo kernels -- each gives the same step as the plain one (tiny models, CPU)."""
import pytest
import torch

from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig
from fastep.zoo.step.train_step import make_train_step

pytestmark = pytest.mark.usefixtures("one_thread")
RES, BATCH = 32, 2


def _step(name="ours_v3", **tkw):
    tc = TrainConfig(stage=3, approach=name, batch_size=BATCH, resolution=RES, device="cpu", seed=3,
                     compile=tkw.pop("compile", False), **tkw)
    loss = LossConfig.preset(name, perceptual_backbone="random", perceptual_act_scale=1.0)
    return make_train_step(tc, ModelConfig.tiny(resolution=RES), "cpu", loss_cfg=loss)


def _batch():
    g = torch.Generator().manual_seed(1234)
    return torch.rand(BATCH, 3, RES, RES, generator=g) * 2 - 1, torch.rand(BATCH, 3, RES, RES, generator=g) * 2 - 1


def test_config_switches_and_their_errors():
    tc = TrainConfig()
    assert (tc.aligned_convs, tc.compile_scope, tc.combo_kernels) == (True, "network", False)
    base = TrainConfig(eager_fp32=True)
    assert not base.aligned_convs and not base.combo_kernels
    with pytest.raises(ValueError, match="compile_scope"):
        TrainConfig(compile_scope="graph")
    with pytest.raises(TypeError):
        TrainConfig(aligned_convs="yes")


def test_aligned_convs_are_on_in_the_fast_path_and_off_in_the_baseline():
    fast, base = _step(), _step(eager_fp32=True)
    for step, on in ((fast, True), (base, False)):
        assert step.aligned_convs is on
        for m in (step.G, step.E, step.D, step.G_ema, step.E_ema):
            assert all(getattr(s, "fast_convs") is on for s in m.modules() if hasattr(s, "fast_convs"))


@pytest.mark.parametrize("name", ["ours_v3", "bicycle_v1"])
def test_aligned_convs_give_the_same_step(name):
    A, B = _batch()
    on, off = _step(name), _step(name, aligned_convs=False)
    torch.manual_seed(0)  # the same VAE / prior noise for both
    lo = on(A, B)
    torch.manual_seed(0)
    lf = off(A, B)
    for k in ("loss_d", "loss_g", "loss_g2", "rec"):
        torch.testing.assert_close(lo[k], lf[k], rtol=1e-4, atol=1e-6)
    assert on.G.state_dict().keys() == off.G.state_dict().keys()


@pytest.mark.parametrize("scope,name", [("network", "ours_v3"), ("network", "bicycle_v1"), ("step", "ours_v3")])
def test_compiled_scopes_match_eager(scope, name):
    """aot_eager (Dynamo fullgraph per graph + AOTAutograd backward): per-network graphs
    (G.encode, G.decode, E, D, D and G through other parameters, VGG) or the whole forward."""
    A, B = _batch()
    eager = _step(name)
    comp = _step(name, compile=True, compile_backend="aot_eager", compile_scope=scope)
    assert comp.compiled and comp.compile_scope == scope
    for i in range(2):
        torch.manual_seed(i)
        le = eager(A, B)
        torch.manual_seed(i)
        lc = comp(A, B)
        for k in ("loss_d", "loss_g", "loss_g2", "rec"):
            torch.testing.assert_close(lc[k], le[k], rtol=2e-2, atol=1e-4)
    if scope == "network":
        assert comp._fn == comp._forward  # the forward itself runs eagerly around compiled networks
    torch._dynamo.reset()


def test_combo_kernels_pass_as_inductor_options(monkeypatch):
    seen = {}
    real = torch.compile

    def spy(fn, **kw):
        seen.update(kw)
        return real(fn, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    _step(compile=True, combo_kernels=True, compile_scope="step")  # inductor: options, no mode
    assert seen["options"]["combo_kernels"] is True and "mode" not in seen
    seen.clear()
    _step(compile=True, combo_kernels=True, compile_backend="aot_eager")  # not inductor: no options
    assert "options" not in seen


def test_cuda_graph_inputs_live_in_buffers_that_keep_their_address():
    """The buffer logic of the CUDA-graphs path (the graphs themselves need CUDA: tests/train)."""
    step = _step()
    A, B = _batch()
    a1, b1 = step._static_batch_of(A, B)
    a2, b2 = step._static_batch_of(2 * A, B + 1)
    assert a1.data_ptr() == a2.data_ptr() and b1.data_ptr() == b2.data_ptr()
    assert torch.equal(a2, 2 * A) and torch.equal(b2, B + 1)
    a3, _ = step._static_batch_of(torch.zeros(1, 3, RES, RES), torch.zeros(1, 3, RES, RES))
    assert a3.shape[0] == 1  # a new batch shape gets new buffers
