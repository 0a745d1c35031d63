"""The one Ray session helper: every driver (the data job, the chain, Ray Train) joins the cluster
`ray job submit` points at (RAY_ADDRESS), or starts a local one, the same way; and the environment
every worker of this project gets.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parents[1]

# Workers never reach for a hub; vLLM's per-request INFO lines would drown the job's progress.
# Ray Train 2.60 replaces `print` in its workers with a logger call at INFO that also writes to
# whatever sys.stdout is at the time; dill (under `datasets`' map fingerprints) captures the output
# of `dis.dis` by swapping sys.stdout, so every function it hashes had its disassembly logged.
# Workers keep the builtin print (their stdout still reaches the driver).
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
              "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
              "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
# Workers a local session keeps alive beyond one per CPU (RAY_num_workers_soft_limit; see connect).
LOCAL_IDLE_WORKERS = 14
# The Ray Train PlacementGroupCleaner's logger, in its own detached actor.
PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def scorer_env(scorer_num_cpus: float) -> dict[str, str]:
    """A scorer actor with two or more CPUs reserved tokenizes on that many threads. Tokenizing was
    42% of a GPU Scorer pass, and threads made the pass 1.8x faster (bench/README.md); one that
    shares a core with the engine, as on the CPU default, stays on one."""
    if (threads := int(scorer_num_cpus)) < 2:
        return WORKER_ENV
    return WORKER_ENV | {"TOKENIZERS_PARALLELISM": "true", "RAYON_NUM_THREADS": str(threads)}


def connect(num_cpus: int | None = None) -> str:
    """Join the cluster `ray job submit` points us at (RAY_ADDRESS), else start a local one with
    `num_cpus` CPUs (default: all). Returns the address, "local", or "existing"."""
    if ray.is_initialized():
        return "existing"
    # ray.init replaces the driver's SIGTERM handler with its own (sys.exit); a driver that set one
    # (cluster/run.py: stop cleanly, exit 143) keeps it.
    handler = signal.getsignal(signal.SIGTERM)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        address = os.environ["RAY_ADDRESS"]
    else:
        # Ray's raylet keeps at most its soft limit of idle workers (default: the node's CPUs) and
        # kills the rest after a second idle. The job's read and commit tasks run in bursts on more
        # workers than a 2-CPU node keeps, so each burst started new Pythons (3-5 s of CPU each): 39
        # worker processes in the first 6.5 minutes of a 100k-prompt job, 9 in the whole run at a
        # limit of 16 (bench/README.md "The real job at 1k, 10k and 100k prompts"). An operator's
        # value wins.
        os.environ.setdefault("RAY_num_workers_soft_limit", str((num_cpus or os.cpu_count() or 1) + LOCAL_IDLE_WORKERS))
        # Workers of a local cluster import this repo's packages (actors, Ray Train workers).
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": WORKER_ENV | {"PYTHONPATH": path},
                              "worker_process_setup_hook": "cluster.session.quiet_local_worker"})
        address = "local"
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
    return address


def quiet_local_worker() -> None:
    """Run by Ray at the start of every worker process of a local session (worker_process_setup_hook).

    A local session runs without Ray's dashboard, so the State API that Ray Train's
    PlacementGroupCleaner polls every second to see whether its controller still lives is not there:
    each poll logged "Failed to query Ray Train Controller actor state", once a second for the whole
    training. Without the State API the cleaner can never see its controller die, so nothing it
    could say is lost here; on a real cluster (RAY_ADDRESS, a dashboard) it keeps its warnings."""
    import logging

    logging.getLogger(PG_CLEANER_LOGGER).setLevel(logging.ERROR)


def object_store_used_bytes() -> int | None:
    """Bytes in the cluster's object stores now (what `ray memory --stats-only` reports), or None
    when Ray cannot say within a few seconds. Asked of this process's own raylet: any raylet answers
    for the whole cluster, but Ray's helper picks the first node its table lists as alive, and a node
    lost a moment ago is listed alive until its health checks time out; the refused connection
    failed a job whose samplers had already recovered from that loss (test_multinode)."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    try:
        me = ray.get_runtime_context().get_node_id()
        node = next(n for n in ray.nodes() if n["NodeID"] == me)
        reply = get_memory_info_reply(get_state_from_address(None), node["NodeManagerAddress"],
                                      node["NodeManagerPort"], timeout_seconds=5)
        return int(reply.store_stats.object_store_bytes_used)
    except Exception as e:  # a sample of a gauge: never a reason to stop the job
        print(f"[rsdpo] object-store memory not sampled this time: {type(e).__name__}", flush=True)
        return None
