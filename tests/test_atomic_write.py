"""fastep.io.atomic_write (checkpoints, metrics, mined outputs): the data are fsync'ed before the
rename and the folder after it, so a crash or power loss leaves the old file or the new one."""
import os
from pathlib import Path

import pytest

from fastep.io import atomic_write


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name file descriptors")
def test_fsync_file_then_rename_then_fsync_folder(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", Path(target), os.path.isdir(target)))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    dest = tmp_path / "out" / "ckpt.pt"
    atomic_write(dest, lambda fh: fh.write(b"payload"))
    assert dest.read_bytes() == b"payload"
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    (_, synced_file, is_dir0), (_, src, dst), (_, synced_dir, is_dir2) = events
    assert not is_dir0 and synced_file == src and src.parent == dest.parent  # temp file in the same folder
    assert dst == dest
    assert is_dir2 and synced_dir == dest.parent
