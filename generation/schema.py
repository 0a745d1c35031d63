"""Arrow schemas of the generation stage.

PROMPT_INDEX: the driver's view of a prompt set (generation.prompts.scan_prompts): per usable
prompt its id, a content digest and a locator, never its text; shards read their text by locator.
PROMPTS: what the sampler reads (produced by generation.prompts from JSONL/Parquet/builtin sets).
SAMPLES: what the sampler writes, one row per prompt; consumed by rewarding.Scorer.

Columns
- prompt_id      stable id of the prompt (input field, or derived); seeds derive from it.
- prompt_digest  16-byte sha256 of the prompt's source row (a resumed run compares it).
- file           which of the source's files the row is in (PromptIndex.files).
- locator        where the row is in that file: JSONL byte offset, Parquet row, builtin index.
- prompt         the conversation so far, a list of {role, content}; the last turn is the user's.
- reference      an optional reference answer (e.g. AlpacaEval's GPT-4 output), else null.
- source         where the prompt came from (file path or builtin set and subset).
- responses      k sampled assistant replies (empty list on a row error).
- finish_reasons per response: "stop" (EOS/stop string) or "length" (hit max_tokens).
- num_tokens     per response: generated token count.
- prompt_tokens  tokens of the chat-templated prompt.
- seed           per-prompt sampling seed, derived from (run seed, prompt_id).
- error          null, or "<kind>: <detail>" for a row that could not be sampled (kept, counted).
"""

import pyarrow as pa

PROMPT_ID = "prompt_id"
PROMPT = "prompt"
REFERENCE = "reference"
SOURCE = "source"
RESPONSES = "responses"
FINISH_REASONS = "finish_reasons"
NUM_TOKENS = "num_tokens"
PROMPT_TOKENS = "prompt_tokens"
SEED = "seed"
ERROR = "error"

PROMPT_DIGEST = "prompt_digest"
FILE = "file"
LOCATOR = "locator"

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

PROMPT_INDEX_SCHEMA = pa.schema([
    (PROMPT_ID, pa.string()),
    (PROMPT_DIGEST, pa.binary(16)),
    (FILE, pa.int32()),
    (LOCATOR, pa.int64()),
])

PROMPTS_SCHEMA = pa.schema([
    (PROMPT_ID, pa.string()),
    (PROMPT, MESSAGES),
    (REFERENCE, pa.string()),
    (SOURCE, pa.string()),
])

SAMPLES_SCHEMA = pa.schema([
    *PROMPTS_SCHEMA,
    (RESPONSES, pa.list_(pa.string())),
    (FINISH_REASONS, pa.list_(pa.string())),
    (NUM_TOKENS, pa.list_(pa.int32())),
    (PROMPT_TOKENS, pa.int32()),
    (SEED, pa.int64()),
    (ERROR, pa.string()),
])
