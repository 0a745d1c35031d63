"""The training stage on Ray Train: a TorchTrainer whose N workers each run training.train.train.

Run directly (starts a local Ray cluster, or joins the one RAY_ADDRESS names):
    python -m cluster.train --input PAIRS --output MODEL [--config F] [key=value ...]
    python -m cluster.train --input outputs/default/pairs --output outputs/default/policy \
        num_workers=2 deepspeed=zero2 dpo.max_steps=50
From the pipeline:
    from cluster.train import train_on_ray
    manifest = train_on_ray(cfg.training, run_dir / "pairs", run_dir / "policy")

Workers use the GPUs when the cluster has them (NCCL), else CPUs (gloo, DS_ACCELERATOR=cpu). Ray Train
sets up torch.distributed and the RANK/WORLD_SIZE/... variables; the training code is the same one
`python -m training` and torchrun run. Checkpoints and the final model are written by the workers
straight into MODEL (not through Ray's checkpoint storage), so MODEL must be a path every worker sees
(one node, or a shared filesystem). Re-running after a failure resumes from MODEL's newest checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import ray

from cluster.config import stage_config
from cluster.session import connect
from rsdpo.cli import exits_2_on_input_error, stage_parser
from rsdpo.logs import setup_logging
from rsdpo.manifest import read_manifest
from training.config import TrainingConfig


def _worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the plain training function, then a report so Ray records the metrics."""
    import ray.train

    from training.train import train

    record = train(TrainingConfig.model_validate(loop_config["config"]), loop_config["pairs"],
                   loop_config["output"])
    metrics = {k: v for k, v in record.get("metrics", {}).items() if isinstance(v, int | float)}
    ray.train.report(metrics)


def train_on_ray(config: TrainingConfig, pairs_dir: str | Path, output_dir: str | Path, *,
                 run_name: str = "rsdpo-training") -> dict[str, Any]:
    """Train on `config.num_workers` Ray Train workers; return the output's manifest.

    Joins the running Ray cluster (ray.init already called, or RAY_ADDRESS set), else starts a local one.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    connect()
    use_gpu = ray.cluster_resources().get("GPU", 0) >= config.num_workers
    output = Path(output_dir).expanduser().resolve()
    # The pairs may be an object-store URI: leave those as they are, make local paths absolute.
    pairs = str(pairs_dir) if "://" in str(pairs_dir) else str(Path(pairs_dir).expanduser().resolve())
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": config.model_dump(mode="json"), "pairs": pairs, "output": str(output)},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        # Ray's own run folder (logs, reported metrics) goes next to the model, not under ~/ray_results.
        run_config=RunConfig(name=run_name, storage_path=str(output.parent / ".ray_train")),
    )
    trainer.fit()  # raises ray.train.TrainingFailedError with the worker's traceback on failure
    manifest = read_manifest(output)
    if manifest is None:
        raise RuntimeError(f"Ray Train finished but {output} has no manifest.json; see the worker logs above")
    return manifest


@exits_2_on_input_error
def main(argv: list[str] | None = None) -> int:
    ap = stage_parser(__doc__, {"": TrainingConfig})
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = stage_config("training", args.config, args.overrides)
    manifest = train_on_ray(config, args.input, args.output)
    print(f"[cluster.train] {args.output}: step {manifest['metrics']['global_step']}, "
          f"train_loss {manifest['metrics'].get('train_loss')}, {manifest['counts']['pairs']} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
