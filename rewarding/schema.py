"""Arrow schema of the rewarding stage: the "scored" shards.

Producer: rewarding.Scorer (and the cluster pipeline, which writes these shards).
Consumers: pairing (any strategy, re-runnable without regenerating), analysis, other teams.
One row per prompt: every SAMPLES column (generation/schema.py) plus

- rewards      k raw reward-model outputs aligned with `responses` (no sigmoid: Algorithm 1
               thresholds raw differences, so the scale must be the model's own).
- reward_mean, reward_std (population), reward_min, reward_max: per-prompt distribution.
- reward_truncated  how many of the row's responses were scored from an input cut to fit
               rewarding.max_length: classifier, the start of the conversation was dropped (the
               response is always read whole); embedding, the response's end was cut.
- error        as in SAMPLES; a scoring failure also lands here: a NaN/inf reward, or a response
               longer than rewarding.max_length on its own (reward_input_too_long).
A row with an error has empty `responses`/`rewards` or rewards that pairing must not use.
"""

import pyarrow as pa

from generation.schema import SAMPLES_SCHEMA

REWARDS = "rewards"
REWARD_MEAN = "reward_mean"
REWARD_STD = "reward_std"
REWARD_MIN = "reward_min"
REWARD_MAX = "reward_max"
REWARD_TRUNCATED = "reward_truncated"

SCORED_SCHEMA = pa.schema([
    *SAMPLES_SCHEMA,
    (REWARDS, pa.list_(pa.float64())),
    (REWARD_MEAN, pa.float64()),
    (REWARD_STD, pa.float64()),
    (REWARD_MIN, pa.float64()),
    (REWARD_MAX, pa.float64()),
    (REWARD_TRUNCATED, pa.int32()),
])
