"""No graph breaks in the training step of any of the six approaches (stage 3): Dynamo traces
each step's forward on CPU (``torch._dynamo.explain``: tracing only, nothing compiled) into one
graph.  The compiled run itself (fullgraph=True, aot_eager) is covered for ours_v3 in
test_step.py; this covers the five other loss configurations' code paths too."""
import pytest
import torch

from fastep.zoo.step.config import APPROACHES, LossConfig, ModelConfig, TrainConfig
from fastep.zoo.step.train_step import make_train_step

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.mark.parametrize("name", APPROACHES)
def test_step_traces_into_one_graph(name):
    tc = TrainConfig(stage=3, approach=name, batch_size=2, resolution=32, device="cpu", compile=False)
    step = make_train_step(tc, ModelConfig.tiny(resolution=32), "cpu",
                           loss_cfg=LossConfig.preset(name, perceptual_backbone="random"))
    A, B = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    torch._dynamo.reset()
    try:
        e = step.explain(A, B)
    finally:
        torch._dynamo.reset()
    assert e.graph_break_count == 0, [str(r.reason) for r in e.break_reasons]
    assert e.graph_count == 1
