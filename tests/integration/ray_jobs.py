"""Following a job as an operator does: `ray job submit --no-wait`, then `ray job status` and
`ray job logs --follow`. Shared by the single-node submit test and the multi-node tests; `cluster` is
anything with `dashboard`, `ray(*args)` (run the CLI where the dashboard is reachable), `ray_argv(*args)`,
`env()` and `track()` (remember the processes it started).
"""

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PY = Path(sys.executable)             # the .venv interpreter, unresolved (resolving drops the venv)
RAY = PY.parent / "ray"
PROGRESS = re.compile(r"\[rsdpo\] committed (shard-\d{5}):")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def submit(cluster, config: Path, *overrides: str, sid: str | None = None) -> tuple[str, str]:
    """`ray job submit --no-wait` of the job; returns (submission id, the CLI's output)."""
    sid = sid or f"rsdpo-test-{time.time_ns()}"
    res = cluster.ray("job", "submit", "--address", cluster.dashboard, "--submission-id", sid, "--no-wait",
                      "--working-dir", str(ROOT), "--runtime-env-json", json.dumps({"env_vars": {"HF_HUB_OFFLINE": "1"}}),
                      "--", str(PY), "-m", "cluster.run", "--config", str(config), *overrides, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return sid, res.stdout + res.stderr


def status(cluster, sid: str) -> str:
    res = cluster.ray("job", "status", "--address", cluster.dashboard, sid)
    text = res.stdout + res.stderr
    # The CLI words terminal states as sentences, the others as "Status for job 'ID': STATUS".
    for state, pattern in [("SUCCEEDED", r"Job '[^']+' succeeded"), ("FAILED", r"Job '[^']+' failed"),
                           ("STOPPED", r"Job '[^']+' was stopped"), (None, r"Status for job '[^']+': (\w+)")]:
        if m := re.search(pattern, text):
            return state or m.group(1)
    raise AssertionError(text[-3000:])


def logs(cluster, sid: str) -> str:
    return cluster.ray("job", "logs", "--address", cluster.dashboard, sid).stdout


def wait(cluster, sid: str, timeout: float, on_progress=None) -> tuple[str, list[tuple[float, str]], float]:
    """Poll `ray job status` until the job ends, while `ray job logs --follow` streams its log.
    `on_progress(line)` is called (on the reader thread) for each progress line as it arrives.
    Returns (final status, [(arrival time, progress line)], time the end was first seen)."""
    follow = subprocess.Popen(cluster.ray_argv("job", "logs", "--address", cluster.dashboard, "--follow", sid),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                              env=cluster.env())
    arrivals: list[tuple[float, str]] = []

    def read():
        for line in follow.stdout:
            if PROGRESS.search(line):
                arrivals.append((time.time(), line.strip()))
                if on_progress is not None:
                    on_progress(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + timeout
    state = "PENDING"
    try:
        while time.time() < deadline:
            cluster.track()
            state = status(cluster, sid)
            if state in TERMINAL:
                break
            time.sleep(2)
        ended = time.time()
    finally:
        try:
            follow.wait(30)  # --follow exits once the job ends
        except subprocess.TimeoutExpired:
            follow.kill()
            follow.wait()
        reader.join(10)
    if state not in TERMINAL:
        cluster.ray("job", "stop", "--address", cluster.dashboard, sid)
        pytest.fail(f"job {sid} still {state} after {timeout}s:\n{logs(cluster, sid)[-5000:]}")
    return state, arrivals, ended
