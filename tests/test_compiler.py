"""fastep.compiler: the cache folder, cache artifacts, and kernel counts of generated code."""
import os
from pathlib import Path

import pytest
import torch

from fastep import compiler

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTEP_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiler.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FASTEP_CACHE")
    assert compiler.cache_dir() == tmp_path / "xdg" / "fastep"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compiler.cache_dir() == Path.home() / ".cache" / "fastep"


def test_use_cache_dir_keeps_what_the_user_set(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    paths = compiler.use_cache_dir(tmp_path / "root")
    assert paths["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "root" / "inductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == paths["TORCHINDUCTOR_CACHE_DIR"]
    assert (tmp_path / "root" / "inductor").is_dir()
    assert paths["TRITON_CACHE_DIR"] == str(tmp_path / "mine")


def test_artifacts_path_names_versions_and_device(tmp_path):
    art = compiler.CompileArtifacts("ours_v3 b8/r256", device="cpu", root=tmp_path)
    name = art.path.name
    assert art.path.parent == tmp_path
    assert name.startswith("ours_v3-b8-r256__torch-") and name.endswith("__cpu.bin")
    assert "/" not in name and "+" not in name
    assert art.load() is False  # nothing there yet


def test_artifacts_that_do_not_load_warn_and_compile_from_scratch(tmp_path):
    art = compiler.CompileArtifacts("bad", device="cpu", root=tmp_path)
    art.path.write_bytes(b"not an artifact file")
    with pytest.warns(UserWarning, match="could not be loaded"):
        assert art.load() is False


_TRITON_LIKE = '''
triton_poi_fused_add_0 = async_compile.triton('triton_poi_fused_add_0', """...""")
triton_red_fused_sum_1 = async_compile.triton('triton_red_fused_sum_1', """...""")
async_compile.wait(globals())

class Runner:
    def __init__(self, partitions):
        self.partitions = partitions

    def call(self, args):
        arg0_1, arg1_1 = args
        with torch.cuda._DeviceGuard(0):
            buf0 = empty_strided_cuda((8, 4), (4, 1), torch.float32)
            # Topologically Sorted Source Nodes: [add], Original ATen: [aten.add]
            stream0 = get_raw_stream(0)
            triton_poi_fused_add_0.run(arg0_1, buf0, 32, stream=stream0)
            buf1 = empty_strided_cuda((8, 8), (8, 1), torch.float32)
            extern_kernels.mm(buf0, arg1_1, out=buf1)
            buf2 = torch.ops.aten.convolution_backward.default(buf1, arg0_1, arg1_1, [4], (1, 1))
            buf3 = torch.ops.fastep.weighted_feature_distance.default(buf1, buf1)
            assert_tensor_metadata(buf2, (1,), (1,), torch.float32, 'torch.ops.aten.convolution_backward.default')
            triton_red_fused_sum_1.run(buf1, buf0, 8, 8, stream=stream0)
            triton_poi_fused_add_0.run(buf0, buf1, 32, stream=stream0)
        return (buf1, )

runner = Runner(partitions=[])
call = runner.call
'''


def test_count_kernels_reads_launches_from_generated_code():
    n = compiler.count_kernels([_TRITON_LIKE])
    assert (n.fused, n.extern, n.fallback, n.definitions, n.graphs) == (3, 1, 2, 2, 1)
    assert n.total == 6
    assert n.by_name == {"mm": 1, "aten.convolution_backward": 1, "fastep.weighted_feature_distance": 1}
    assert n.as_dict()["kernels_total"] == 6


def test_generated_code_of_a_real_compile_and_its_artifacts(tmp_path, monkeypatch):
    """One small inductor compile on CPU: its forward and backward graphs are captured and
    counted, and its cache artifacts are saved and loaded back."""
    conv = torch.nn.Conv2d(3, 4, 3)

    def f(x):
        return (torch.relu(conv(x)) * 2).sum() + x.mean()

    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    torch._dynamo.reset()
    fn = torch.compile(f, backend="inductor", fullgraph=True)
    with compiler.generated_code() as codes:
        fn(x).backward()
    assert len(codes) == 2  # forward, backward
    n = compiler.count_kernels(codes)
    assert n.fused >= 2 and n.extern + n.fallback >= 2  # the conv forward and its backward
    art = compiler.CompileArtifacts("tiny", device="cpu", root=tmp_path)
    path = art.save()
    assert path is not None and path.is_file() and path.stat().st_size > 0
    assert compiler.CompileArtifacts("tiny", device="cpu", root=tmp_path).load() is True
    torch._dynamo.reset()
