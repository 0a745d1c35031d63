"""Atomic file writes: write beside the target under a temp name, then rename into place.

The temp name starts with a dot (`.NAME.PID.tmp`), so directory readers (pyarrow, pandas,
`datasets`) skip a shard that is still being written.

Readers (and resumed jobs) see either the previous file or the whole new one. A write that
fails or is interrupted (Ctrl-C, or Ray cancelling a task with KeyboardInterrupt) removes its
temp file; one whose process was killed outright leaves it, and the owner of the folder clears
such leftovers (`clear_temp_files`) before it writes again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; it becomes `path` when the block ends without error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def clear_temp_files(folder: str | Path) -> None:
    """Remove the temp files that writers killed mid-write left in `folder`: never complete, never read."""
    for stale in Path(folder).glob(f".*{TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
