"""Shared test configuration.

Two runs make up the suite (see README / .ci/run):

* the normal run (``pytest``): op plumbing, reference paths, C++ kernels, opcheck, compile;
  ``@pytest.mark.triton`` tests run here only when a CUDA device is present;
* the interpreter run (``TRITON_INTERPRET=1 pytest -m triton``): the Triton launchers called
  directly on CPU tensors.  torch.library/opcheck/compile tests don't belong in it, because
  fake-tensor tracing would launch the interpreter on meta tensors.
"""
import os
import random
import re
import zlib

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_CUDA = torch.cuda.is_available()


def _names_cuda(value):
    if isinstance(value, torch.device):
        return value.type == "cuda"
    return isinstance(value, str) and (value == "cuda" or value.startswith("cuda:"))


def _has_cuda_case(item):
    """True when a parametrised item runs on CUDA (a ``device`` param of "cuda", a torch.device,
    or "cuda" as a token of its id): such items get the ``cuda`` marker, so that the GPU
    script's ``-m "cuda or triton"`` selects them and the CPU run reports them as skipped."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    if any(_names_cuda(v) for v in callspec.params.values()):
        return True
    return "cuda" in re.split(r"[-\[\]]", callspec.id)


def pytest_collection_modifyitems(config, items):
    skip_triton = pytest.mark.skip(reason="Triton tests need CUDA or TRITON_INTERPRET=1 (interpreter run)")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" not in item.keywords and _has_cuda_case(item):
            item.add_marker(pytest.mark.cuda)
        if "triton" in item.keywords and not (INTERPRET or HAS_CUDA):
            item.add_marker(skip_triton)
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture
def triton_device():
    """Where Triton kernels run in this session: CUDA if present, else CPU (interpreter)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


# Fresh random inputs on every run, reproducible on demand: FASTEP_TEST_SEED=<n> replays a run.
SESSION_SEED = int(os.environ.get("FASTEP_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"fastep test seed: FASTEP_TEST_SEED={SESSION_SEED} (set it to replay this run)"


# FASTEP_TEST_FAILLOG=<file>: append each failure's traceback the moment it happens.  A GPU
# session killed by its time limit never reaches pytest's summary; this file still has them.
FAILLOG = os.environ.get("FASTEP_TEST_FAILLOG")


def pytest_runtest_logreport(report):
    if FAILLOG and report.failed:
        with open(FAILLOG, "a") as f:
            f.write(f"==== {report.nodeid} ({report.when}) FAILED, FASTEP_TEST_SEED={SESSION_SEED}\n")
            f.write(f"{report.longreprtext}\n\n")


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny tensors gain nothing from threads, and their
    spin-waits contend on shared 2-core CI machines (``pytestmark = usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed_everything(request):
    seed = (zlib.crc32(request.node.nodeid.encode()) ^ SESSION_SEED) % (2**31)
    torch.manual_seed(seed)
    yield
