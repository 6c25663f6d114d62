"""Resume with data-loader worker processes: an interrupted + resumed run with ``num_workers=2``
is bit-identical to an uninterrupted one, and to the same run without workers (the per-sample
augmentation is seeded by (seed, epoch, index), not by whichever process loads the sample); and a
resume mid-epoch decodes only the images still to come (the sampler skips, nothing is read and
thrown away)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _toy import ToyPairs, ToyStep, loop_args, weights_of  # noqa: E402

from fastep.train.checkpoint import CheckpointManager  # noqa: E402
from fastep.train.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupt(BaseException):
    pass


def _run(out, workers, seed=0, stop_at=None, resume=False):
    torch.manual_seed(seed)
    step = ToyStep()
    # 12 steps of batch 4 over 22 images (5 batches / epoch): the stop at 7 is mid-epoch 2
    tr = Trainer(step, ToyPairs(n=22), system="toy", stage="2", batch_size=4, out_dir=out, progress=False,
                 tensorboard=False,
                 **loop_args(0.048, seed=3, log_every=3, ckpt_every_kimg=0.012, num_workers=workers))

    def stop(t):
        if t.step_idx == stop_at:
            raise Interrupt()

    try:
        tr.fit(resume=resume, _after_step=stop if stop_at else None)
    except Interrupt:
        pass
    return step, tr


def test_resume_with_loader_workers_is_bit_identical(tmp_path):
    ref, _ = _run(tmp_path / "ref", workers=2)
    plain, _ = _run(tmp_path / "plain", workers=0)
    _, tr = _run(tmp_path / "run", workers=2, stop_at=7)
    assert tr.step_idx == 7
    assert [s for s, _ in CheckpointManager(tmp_path / "run" / "checkpoints", prefix="stage2").list()] == [3, 6]
    resumed, tr = _run(tmp_path / "run", workers=2, seed=1234, resume=True)  # all state from the checkpoint
    assert tr.step_idx == 12 and resumed.calls == 12  # 6 restored from the checkpoint + 6 run
    w_ref, w_res, w_plain = weights_of(ref), weights_of(resumed), weights_of(plain)
    for k in w_ref:
        assert torch.equal(w_ref[k], w_res[k]), f"resumed {k} differs"
        assert torch.equal(w_ref[k], w_plain[k]), f"{k}: workers=2 and workers=0 differ"


class CountingPairs(ToyPairs):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.decoded = 0

    def __getitem__(self, i):
        self.decoded += 1
        return super().__getitem__(i)


def test_resume_mid_epoch_decodes_only_the_remaining_images(tmp_path):
    def trainer(ds):
        torch.manual_seed(0)
        return Trainer(ToyStep(), ds, system="toy", stage="2", batch_size=4, out_dir=tmp_path, progress=False,
                       tensorboard=False, **loop_args(0.048, seed=3, log_every=3, ckpt_every_kimg=0.012))

    def stop(t):
        if t.step_idx == 7:
            raise Interrupt()

    with pytest.raises(Interrupt):
        trainer(ToyPairs(n=22)).fit(_after_step=stop)
    ds = CountingPairs(n=22)
    tr = trainer(ds)
    tr.fit(resume=True)  # from step 6 (epoch 1, batch 1 of 5) to 12
    assert tr.step_idx == 12
    assert ds.decoded == (12 - 6) * 4  # the skipped batch of epoch 1 is never decoded
