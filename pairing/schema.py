"""Arrow schema of the pairing stage: the "pairs" shards, in TRL's preference format.

Producer: pairing.make_pairs. Consumers: TRL DPOTrainer (reads prompt/chosen/rejected as is:
conversational, since the prompt is a message list), `datasets.load_dataset("parquet", ...)`.

- prompt           the conversation (list of {role, content}), as in the scored shard.
- chosen/rejected  one assistant turn each: [{"role": "assistant", "content": text}].
- prompt_id        the prompt the pair came from.
- chosen_reward, rejected_reward   raw rewards of the two responses.
- chosen_index, rejected_index     indices of the two responses among the prompt's k samples.
- strategy         the pairing strategy that emitted the pair (e.g. "rs-dpo").
Rows are shuffled within each shard (seeded): TRL's DPO dataloader reads in file order.
"""

import pyarrow as pa

from generation.schema import MESSAGES, PROMPT, PROMPT_ID

CHOSEN = "chosen"
REJECTED = "rejected"
CHOSEN_REWARD = "chosen_reward"
REJECTED_REWARD = "rejected_reward"
CHOSEN_INDEX = "chosen_index"
REJECTED_INDEX = "rejected_index"
STRATEGY = "strategy"

PAIRS_SCHEMA = pa.schema([
    (PROMPT, MESSAGES),
    (CHOSEN, MESSAGES),
    (REJECTED, MESSAGES),
    (PROMPT_ID, pa.string()),
    (CHOSEN_REWARD, pa.float64()),
    (REJECTED_REWARD, pa.float64()),
    (CHOSEN_INDEX, pa.int32()),
    (REJECTED_INDEX, pa.int32()),
    (STRATEGY, pa.string()),
])
