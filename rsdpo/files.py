"""Atomic file writes on a POSIX file system: write beside the target under a temp name, fsync it,
rename it into place, fsync the folder.

The temp name starts with a dot (`.NAME.PID-TOKEN.tmp`), so directory readers (pyarrow, pandas,
`datasets`) skip a shard that is still being written.

Readers (and resumed jobs) see either the previous file or the whole new one, also after a power
loss or a node crash: the data is on disk before the rename (fsync of the file), and the rename
itself is on disk before the writer reports success (fsync of the folder that holds the entry).
Object stores commit differently (one upload, rsdpo/storage.py); this is the file-system half.

A write that fails or is interrupted (Ctrl-C, or Ray cancelling a task with KeyboardInterrupt)
removes its temp file; one whose process was killed outright leaves it, and the owner of the
folder clears such leftovers (`clear_temp_files`) before it writes again.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk (both open read-only on Linux)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; it becomes `path`, durably, when the block ends without error."""
    path = Path(path)
    # pid + a random token: two writers of one target (threads, or processes after a restart) never
    # share a temp file; the pid says which process left a stale one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def clear_temp_files(folder: str | Path) -> None:
    """Remove the temp files that writers killed mid-write left in `folder`: never complete, never read."""
    for stale in Path(folder).glob(f".*{TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
