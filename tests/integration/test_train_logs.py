"""Integration tier: DPO on Ray Train (tiny model, two steps) with TRL's `report_to: [tensorboard]`.
The metrics reach TensorBoard event files, read back with TensorBoard's own reader, and the driver's
log carries none of the Ray noise that cluster/session.py quiets (the PlacementGroupCleaner's
once-a-second State API warning, dill's disassembly logged by Ray Train's print patch)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_training_metrics_reach_tensorboard_and_ray_train_stays_quiet(tiny_policy, pairs_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "policy"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {  # a local session of its own
        "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.train", "--input", str(pairs_dir), "--output", str(out),
         "--config", "training/configs/tiny.yaml", f"model={tiny_policy}", "num_workers=1", "dpo.max_steps=2",
         "dpo.report_to=[tensorboard]"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-20000:]

    [run] = (out / "checkpoints" / "runs").iterdir()   # the Trainer's output_dir/runs/<time>_<host>/
    events = EventAccumulator(str(run))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/rewards/margins", "train/rewards/accuracies"} <= set(scalars), scalars
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]

    assert "Failed to query Ray Train Controller actor state" not in log
    assert "LOAD_GLOBAL" not in log and "RETURN_VALUE" not in log     # dis.dis lines of dill's hashing
