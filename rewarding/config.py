"""Config of the rewarding stage. Imports nothing heavy."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from rsdpo.assets import BUILTIN_EMBEDDER

BUILTIN_JUDGE = "builtin:smollm2-judge"  # rewarding/judge.py: built on first use, never scores training data


class Backend(StrEnum):
    EMBEDDING = "embedding"    # cosine relevance from a sentence-embedding model (embedded default)
    CLASSIFIER = "classifier"  # HF sequence-classification reward model, num_labels=1, raw logit


class RewardingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Backend = Field(Backend.EMBEDDING, description="embedding | classifier")
    model: str = Field(BUILTIN_EMBEDDER, description="local HF folder, builtin:all-minilm-l6-v2 or "
                       "builtin:smollm2-judge (classifier; rewarding/judge.py)")
    max_length: int = Field(
        512, gt=8, description="tokens per scored input. Longer: a classifier input loses the start of its "
        "conversation, never its response (a response longer on its own makes the row an error); an embedded "
        "response loses its end. Counted per row in reward_truncated")
    batch_size: int = Field(64, gt=0, description="max sequences per forward pass")
    max_batch_tokens: int = Field(16384, gt=0, description="max padded tokens per forward pass")
    max_padding: float | None = Field(
        None, ge=0, le=1,
        description="max share of padding in a batch: a batch closes before a shorter input would push it "
        "past this. null = auto: 0.1 on CPU (compute-bound, a pad token costs what a real one does and small "
        "batches lose nothing), 1.0 on GPU (the token budget alone; large batches keep the device busy)")
    share_prefix: bool = Field(
        True,
        description="classifier backend with a decoder reward model (last-token `score` head, e.g. "
        "LlamaForSequenceClassification): the tokens a prompt's k inputs share are run once and each response "
        "continues from their cached keys and values; false: every input runs in full")
    reference_weight: float = Field(
        0.5, ge=0, le=1,
        description="embedding backend, rows with a reference: reward = (1-w)*cos(response, prompt) "
        "+ w*cos(response, reference); without a reference w is 0")
    device: str = Field("auto", description="auto (cuda when available) | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    trust_remote_code: bool = Field(False, description="allow model code from the model folder")
    allow_pickle_weights: bool = Field(False, description="allow .bin (pickle) weights; default safetensors only")
