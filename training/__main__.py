"""Local entry point of the training stage (DPO with TRL on pairs shards).

    python -m training --input PAIRS --output MODEL [--config F] [key=value ...]
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m training --input PAIRS --output MODEL deepspeed=zero2

Overrides are dotted keys of training.config.TrainingConfig, e.g. `beta=0.1 dpo.max_steps=50
dpo.per_device_train_batch_size=2 deepspeed=zero3`. A run config's `training:` section is picked up.
"""

from __future__ import annotations

import sys

from rsdpo.cli import exits_2_on_input_error, stage_parser
from rsdpo.logs import setup_logging
from training.config import TrainingConfig


@exits_2_on_input_error
def main(argv: list[str] | None = None) -> int:
    from cluster.config import stage_config  # a run config is validated whole (entry points only)

    ap = stage_parser(__doc__, {"": TrainingConfig})
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    config = stage_config("training", args.config, args.overrides)
    from training.train import train

    train(config, args.input, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
