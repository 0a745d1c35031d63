"""Arrow schema of the rewarding stage: the "scored" shards.

Producer: rewarding.Scorer (and the cluster pipeline, which writes these shards).
Consumers: pairing (any strategy, re-runnable without regenerating), analysis, other teams.
One row per prompt: every SAMPLES column (generation/schema.py) plus

- rewards      k raw reward-model outputs aligned with `responses` (no sigmoid: Algorithm 1
               thresholds raw differences, so the scale must be the model's own).
- reward_mean, reward_std (population), reward_min, reward_max: per-prompt distribution.
- error        as in SAMPLES; a scoring failure (e.g. NaN/inf reward) also lands here.
A row with an error has empty `responses`/`rewards` or rewards that pairing must not use.
"""

import pyarrow as pa

from generation.schema import SAMPLES_SCHEMA

REWARDS = "rewards"
REWARD_MEAN = "reward_mean"
REWARD_STD = "reward_std"
REWARD_MIN = "reward_min"
REWARD_MAX = "reward_max"

SCORED_SCHEMA = pa.schema([
    *SAMPLES_SCHEMA,
    (REWARDS, pa.list_(pa.float64())),
    (REWARD_MEAN, pa.float64()),
    (REWARD_STD, pa.float64()),
    (REWARD_MIN, pa.float64()),
    (REWARD_MAX, pa.float64()),
])
