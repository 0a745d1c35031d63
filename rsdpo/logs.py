"""One logging set-up for every entry point (`--log-level`), and the progress bars of the
standalone stages. The Ray noise is quieted where Ray starts workers (cluster/session.py).

    rsdpo --log-level debug run ...        # or any entry point: python -m pairing --log-level warning ...
    RSDPO_LOG_LEVEL=debug rsdpo pair ...   # the same, also for the subprocesses an entry point starts
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyarrow only where tables are: `rsdpo --help` runs with no dependency installed
    import pyarrow as pa

LEVELS = ("debug", "info", "warning", "error")
ENV = "RSDPO_LOG_LEVEL"


def add_log_level(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--log-level", choices=LEVELS, default=os.environ.get(ENV, "info"),
                    help=f"log level of this process and its workers (default: ${ENV}, else info)")


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger at `level` (default $RSDPO_LOG_LEVEL, else info).

    Exported as $RSDPO_LOG_LEVEL so that subprocesses set themselves up alike; vLLM, whose engine
    processes configure their own logging, reads VLLM_LOGGING_LEVEL (left alone when the caller set it)."""
    level = (level or os.environ.get(ENV, "info")).lower()
    os.environ[ENV] = level
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "DEBUG" if level == "debug" else "WARNING")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def progress_bar(total: int, desc: str, unit: str = "prompt"):
    """A tqdm bar on stderr for the standalone stages and evaluation; off when stderr is not a
    terminal (logs and CI stay clean) or TQDM_DISABLE is set. Ray jobs print a line per shard instead."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True)


PROGRESS_ROWS = 64   # prompts per call when a whole-table stage reports progress in steps


def map_in_steps(fn: Callable[[pa.Table], pa.Table], table: pa.Table, bar) -> pa.Table:
    """fn over `table` PROGRESS_ROWS rows at a time, ticking `bar` per step; the results concatenated.
    For stages whose rows are independent (the Scorer: each prompt's k responses are scored alone)."""
    import pyarrow as pa

    parts = []
    for start in range(0, table.num_rows, PROGRESS_ROWS):
        part = table.slice(start, PROGRESS_ROWS)
        parts.append(fn(part))
        bar.update(part.num_rows)
    return pa.concat_tables(parts) if parts else fn(table)
