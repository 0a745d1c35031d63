"""cluster.session.connect's local Ray keeps its idle task workers (a real local Ray, no job).

Ray's raylet keeps at most its soft limit of idle workers (by default the node's CPUs) and kills the
rest after about a second idle. The data job's read and commit tasks come in bursts on more workers
than a 2-CPU node keeps, so each burst started new Pythons. connect() raises the limit; an operator's
RAY_num_workers_soft_limit wins, which is how the second case shows the library's own behaviour (and
that the first can fail)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

# Three idle actors on a 2-CPU local session, then three bursts of five concurrent one-second tasks,
# 2.5 s apart (longer than the raylet's 1 s idle threshold): how many worker processes ran them.
SCRIPT = """
import os, time
import ray
from cluster.session import connect

connect(2)

@ray.remote(num_cpus=0)
class Idle:
    def pid(self):
        return os.getpid()

actors = [Idle.remote() for _ in range(3)]
ray.get([a.pid.remote() for a in actors])

@ray.remote(num_cpus=0.25)
def task():
    time.sleep(1)
    return os.getpid()

pids = set()
for _ in range(3):
    pids.update(ray.get([task.remote() for _ in range(BURST)]))
    time.sleep(2.5)
print("TASK_WORKERS", len(pids))
ray.shutdown()
"""
BURST = 5


def task_workers(env: dict) -> int:
    proc = subprocess.run([sys.executable, "-c", SCRIPT.replace("BURST", str(BURST))], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("TASK_WORKERS"))
    return int(line.split()[1])


def test_idle_task_workers_are_kept_and_an_operator_limit_wins():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_num_workers_soft_limit")}
    env["PYTHONPATH"] = str(REPO)
    # the first burst's workers run the later bursts too
    assert task_workers(env) <= BURST
    # Ray's default for a 2-CPU node, set by the operator: all but two idle workers are killed
    # between bursts, and each later burst starts new ones
    assert task_workers(env | {"RAY_num_workers_soft_limit": "2"}) > BURST + 2
