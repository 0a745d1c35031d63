"""Where this training process sits in its world, and the DeepSpeed set-up TRL does not do for us.

The same training code runs as one process, as each torchrun rank and inside each Ray Train worker
(cluster/train.py); this module holds what differs between those:

- is_main_process: rank 0, the one process that logs, writes the manifest and deletes files;
- setup_process: environment a process needs before DeepSpeed or accelerate is imported (a world of
  one for a single DeepSpeed process, CPU accelerator, no hub);
- init_deepspeed_comm: the DeepSpeed comm work-around for CPU ZeRO-3 (see its docstring).

    python -m training --input PAIRS --output MODEL deepspeed=zero3     # runs setup_process, ...
"""

from __future__ import annotations

import os
import socket
import sys


def is_main_process() -> bool:
    """Rank 0 of the world (torchrun and Ray Train set RANK; a single process has none)."""
    return os.environ.get("RANK", "0") == "0"


def log(msg: str) -> None:
    # Every rank runs the training code; only the first speaks.
    if is_main_process():
        print(f"[training] {msg}", file=sys.stderr, flush=True)


def setup_process(deepspeed: bool) -> None:
    """Environment variables to set before deepspeed / accelerate are first imported."""
    import torch

    if not torch.cuda.is_available():
        # Must be set before deepspeed is first imported (accelerate/transformers import it lazily).
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if deepspeed and "WORLD_SIZE" not in os.environ:
        # DeepSpeed wants a process group even for one process: make this a world of one.
        with socket.socket() as s:  # a free port: other runs on this machine may hold 29500
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", port))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def init_deepspeed_comm() -> None:
    """Initialise DeepSpeed's own comm layer before any model is built under `deepspeed.zero.Init`.

    On CPU, accelerate sets up torch.distributed itself (its MULTI_CPU branch) and never calls
    `deepspeed.init_distributed`, so `deepspeed.comm` stays uninitialised. ZeRO-3 loads models inside
    `zero.Init`, which parses the DeepSpeed config with `deepspeed.comm.get_world_size()`; with no comm
    backend that lookup fails and the config falls back to world_size 1, so the batch arithmetic the
    Trainer filled in for 2 workers no longer adds up: "train_batch_size is not equal to
    micro_batch_per_gpu * gradient_acc_step * world_size 8 != 4 * 1 * 1". Wrapping the existing
    torch.distributed group in DeepSpeed's comm layer fixes it. On GPU accelerate already did this and
    the call is a no-op.

    On CPU, DeepSpeed's comm layer also JIT-compiles its shared-memory all-reduce op on every start
    (40 s quiet, over 3 min on a busy 2-core box) under a file lock in ~/.cache/torch_extensions. That op
    only serves `inference_all_reduce`, which training never calls, and a worker killed mid-build leaves
    the lock behind, so every later run waits on it forever. Marking the op incompatible skips the build.
    """
    import deepspeed
    import deepspeed.comm
    import deepspeed.ops
    import torch

    if deepspeed.comm.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if not cuda:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo",
                               auto_mpi_discovery=False, verbose=False)
