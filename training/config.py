"""Configs of the training stage: DPO on pairs shards with TRL's DPOTrainer (TrainingConfig) and the
policy-vs-SFT evaluation (EvaluationConfig).

Imports nothing heavy: configs are parsed by every entry point and by tests. TRL's own flags are
passed through in `dpo` (validated against `trl.DPOConfig` when training starts), not mirrored.

    python -m training --input PAIRS --output MODEL [--config training/configs/train.yaml] [key=value ...]
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from generation.config import GenerationConfig, PromptsConfig, Split
from rewarding.config import BUILTIN_JUDGE, Backend, RewardingConfig
from rsdpo.assets import BUILTIN_POLICY

CONFIGS_DIR = Path(__file__).parent / "configs"

# DPOConfig fields this model owns: setting them in `dpo` too would leave two sources of truth.
OWNED_DPO_KEYS = {
    "beta": "beta", "max_length": "max_length", "precompute_ref_log_probs": "precompute_ref_log_probs",
    "seed": "seed", "deepspeed": "deepspeed", "output_dir": "--output", "resume_from_checkpoint": "existing",
    "model_init_kwargs": "dtype / allow_pickle_weights",
}

# Defaults for the `dpo` pass-through; the user's `dpo` entries win key by key.
DEFAULT_DPO: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 1,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 2,     # checkpoints hold optimizer state (about 3x the weights): keep the last two
    "report_to": "none",
}


class DeepSpeed(StrEnum):
    """DeepSpeed ZeRO stage, chosen by a config file at launch (training/configs/ds_<stage>.json)."""

    NONE = "none"    # plain DDP (or one process)
    ZERO2 = "zero2"  # shard optimizer state and gradients
    ZERO3 = "zero3"  # also shard parameters (models that do not fit one device)

    def config_file(self) -> Path | None:
        match self:
            case DeepSpeed.NONE:
                return None
            case DeepSpeed.ZERO2 | DeepSpeed.ZERO3:
                return CONFIGS_DIR / f"ds_{self.value}.json"


class Existing(StrEnum):
    """What to do when --output already holds a run."""

    RESUME = "resume"    # continue from the newest checkpoint; a finished output is left as is (no-op)
    RESTART = "restart"  # delete checkpoints and the final model, train from scratch
    FAIL = "fail"        # refuse to touch a non-empty output folder


class TrainingConfig(BaseModel):
    """DPO on pairs shards (paper: SFT policy as the frozen reference, beta = 0.1)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(BUILTIN_POLICY, description="policy to train (the SFT model): local HF folder or "
                       "builtin:smollm2-135m-instruct (resolved by rsdpo.assets.resolve_model; never downloaded)")
    reference_model: str | None = Field(
        None, description="frozen DPO reference; null = the same weights as `model` (the SFT policy, as in the "
        "paper). Another folder is loaded as a separate model and kept in memory")
    beta: float = Field(0.1, gt=0, description="DPO temperature on the implicit reward (paper: 0.1)")
    max_length: int = Field(1024, ge=16, description="tokens per sequence, prompt + response; longer pairs are "
                            "truncated (TRL keep_start)")
    precompute_ref_log_probs: bool = Field(
        True, description="run the reference once over all pairs before training and reuse its log-probs "
        "(no reference forward per step; with reference_model=null no second model in memory)")
    deepspeed: DeepSpeed = Field(DeepSpeed.NONE, description="none | zero2 | zero3 (config file chosen at launch)")
    num_workers: int = Field(1, ge=1, description="training processes for Ray Train (cluster/train.py), one per "
                             "GPU or CPU worker; `python -m training` takes its world size from torchrun")
    cpus_per_worker: float = Field(1, gt=0, description="Ray Train: CPUs reserved per worker")
    lora: dict[str, Any] | None = Field(
        None, description="peft.LoraConfig(**lora) (e.g. {r: 16, lora_alpha: 32, target_modules: all-linear}); "
        "null = full fine-tuning. The saved policy is merged, so vLLM loads it like any other")
    dtype: str = Field("float32", pattern="^(float32|bfloat16|float16|auto)$",
                       description="weights dtype when loading; set dpo.bf16=true too for bf16 training on GPU")
    allow_pickle_weights: bool = Field(
        False, description="load .bin/.pt (pickle) weights of the policy and reference; by default only "
        "safetensors load (unpickling a weights file can run arbitrary code)")
    seed: int = Field(0, description="seeds the pair shuffle, initialisation and the data order")
    existing: Existing = Field(Existing.RESUME, description="resume | restart | fail: an output that already "
                               "holds a run")
    dpo: dict[str, Any] = Field(
        default_factory=dict, description="passed to trl.DPOConfig(**dpo) over DEFAULT_DPO (batch size, learning "
        "rate, epochs/max_steps, save_steps, bf16, ...). Keys this model owns are refused here")

    @field_validator("dpo")
    @classmethod
    def _no_owned_dpo_keys(cls, dpo: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(k for k in dpo if k in OWNED_DPO_KEYS)
        if clash:
            where = ", ".join(f"dpo.{k} -> use `{OWNED_DPO_KEYS[k]}`" for k in clash)
            raise ValueError(f"set these at the top level of the training config, not in dpo: {where}")
        return dpo

    def dpo_kwargs(self) -> dict[str, Any]:
        """DEFAULT_DPO overlaid with the user's `dpo` (the keys this model owns are added by training.train)."""
        return {**DEFAULT_DPO, **self.dpo}


def _default_eval_prompts() -> list[PromptsConfig]:
    return [
        PromptsConfig(source="builtin:mt_bench", use_reference=False),       # 80 first turns
        # The held-out bucket of AlpacaEval (a stable hash of prompt_id); sample training prompts with
        # prompts.split=train so that these never reach the pairs.
        PromptsConfig(source="builtin:alpaca_eval", split=Split.HELDOUT),
    ]


class EvaluationConfig(BaseModel):
    """Policy vs SFT on held-out prompts: sample both with vLLM, score both with one reward model.

        python -m training.eval --sft MODEL_A --policy MODEL_B --output REPORT_DIR [--config F] [key=value ...]
    """

    model_config = ConfigDict(extra="forbid")

    prompts: list[PromptsConfig] = Field(default_factory=_default_eval_prompts,
                                         description="prompt sets, reported one by one and together")
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(k=2, temperature=0.7, max_tokens=256),
        description="sampling for both policies (`model` is ignored: --sft / --policy choose them); "
        "k responses per prompt, compared by their mean reward")
    rewarding: RewardingConfig = Field(
        default_factory=RewardingConfig, description="the training reward: the scorer the pairs were made with "
        "(a run config sets it to its `rewarding` section unless this is set)")
    judges: list[RewardingConfig] = Field(
        default_factory=lambda: [RewardingConfig(backend=Backend.CLASSIFIER, model=BUILTIN_JUDGE, dtype="bfloat16")],
        description="scorers reported beside the training reward, each a local model; the default "
        "builtin:smollm2-judge never scored training data (rewarding/judge.py). [] = training reward only "
        "(the report warns)")
    judge_check_prompts: int = Field(
        40, ge=0, description="AlpacaEval held-out prompts whose reference-vs-corrupted pairs measure every "
        "scorer's pair accuracy (rewarding/preference.py); 0 = not measured")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples over prompts")
    seed: int = Field(0, description="sampling run seed (both policies get the same per-prompt seeds) "
                      "and bootstrap seed")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [f"evaluation.{k} is now evaluation.{new} (named as the run's own section)"
                   for k, new in (("sampler", "generation"), ("scorer", "rewarding")) if k in data]
            if old:
                raise ValueError("; ".join(old))
        return data
