"""The one Ray session helper: every driver (the data job, the chain, Ray Train) joins the cluster
`ray job submit` points at (RAY_ADDRESS), or starts a local one, the same way; and the environment
every worker of this project gets.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parents[1]

# Workers never reach for a hub; vLLM's per-request INFO lines would drown the job's progress.
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
              "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}


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
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return os.environ["RAY_ADDRESS"]
    # Workers of a local cluster import this repo's packages (actors, Ray Train workers).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": WORKER_ENV | {"PYTHONPATH": path}})
    return "local"
