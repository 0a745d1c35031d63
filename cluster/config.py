"""The composed run config: every stage's section plus the cluster layout, and the cross-stage
rules no single stage can check. Imports nothing heavy (no ray).

    python -m cluster.run --config cluster/configs/default.yaml [key=value ...]
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from generation.config import GenerationConfig, PromptsConfig, Split
from pairing.config import PairingConfig
from rewarding.config import RewardingConfig
from rsdpo import storage
from rsdpo.cli import deep_merge, load_config, parse_overrides, read_yaml, validate
from rsdpo.storage import StorageConfig
from training.config import EvaluationConfig, TrainingConfig


class RoundReference(StrEnum):
    SFT = "sft"            # every round's DPO reference is the original SFT policy (paper-style)
    PREVIOUS = "previous"  # round i+1's reference is round i's policy (the model it samples from)


# Resources Ray defines itself: `ray start --resources` and actor options refuse them as custom ones.
RAY_BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


class ResourcesConfig(BaseModel):
    """How the stages map onto the Ray cluster (Ray Data actor pools)."""

    model_config = ConfigDict(extra="forbid")

    sampler_replicas: int = Field(1, ge=1, description="vLLM engines (one actor each)")
    sampler_num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per sampler actor")
    sampler_num_gpus: float = Field(0.0, ge=0, description="GPUs per sampler actor (= tensor_parallel_size on GPU)")
    sampler_shards_in_flight: int = Field(
        2, ge=1, description="shards each sampler engine works on at once: their requests share engine steps "
        "(continuous batching), so the engine stays full across shard boundaries; shards are admitted "
        "max_tokens/N engine steps apart so they finish one after another, not in bursts")
    sampler_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each sampler actor reserves, e.g. {sampler_node: 1}: "
        "pins samplers to the nodes started with that resource (`ray start --resources`), as a node pool or GPU "
        "type would; a node's amount caps how many samplers it takes. Empty = any node")
    scorer_replicas: int = Field(1, ge=1, description="reward-model actors")
    scorer_num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per scorer actor")
    scorer_num_gpus: float = Field(0.0, ge=0, description="GPUs (or a fraction) per scorer actor")
    scorer_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each scorer actor reserves (as sampler_resources)")
    writer_num_cpus: float = Field(0.25, gt=0, description="CPUs per shard-writer task")
    num_cpus: int | None = Field(None, gt=0, description="local cluster only: CPUs Ray may use (default: all)")
    max_actor_restarts: int = Field(
        3, ge=0, description="restarts of a dead sampler/scorer actor (its batch is retried) before the job fails")

    @model_validator(mode="after")
    def _custom_resources(self) -> ResourcesConfig:
        problems = []
        for name in ("sampler_resources", "scorer_resources"):
            for key, amount in getattr(self, name).items():
                if key in RAY_BUILTIN_RESOURCES:
                    problems.append(f"resources.{name}.{key}: Ray's own resource; use the {name.split('_')[0]}_num_* "
                                    f"fields for CPUs and GPUs")
                elif amount <= 0:
                    problems.append(f"resources.{name}.{key} = {amount}: must be > 0 (it is the amount each actor "
                                    f"reserves; leave the key out to not ask for it)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# Sections whose `seed` is the run's: a stage run alone from a run config gets the same seed.
SEEDED_SECTIONS = ("generation", "pairing", "training", "evaluation")

# vllm.LLM arguments that change how fast or in how much memory the engine runs, never what it
# samples; every other `generation.vllm` key (dtype, quantization, kv_cache_dtype, max_model_len,
# tensor_parallel_size, ...) can change the tokens and so is part of the resume fingerprint.
VLLM_RUNTIME_ONLY = frozenset({
    "gpu_memory_utilization", "enforce_eager", "swap_space", "cpu_offload_gb", "disable_log_stats",
    "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching", "kv_cache_memory_bytes",
})


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dir: str = Field("outputs/default", description="run folder: scored/ and pairs/ (shards under each "
                            "one's data/), README.md (dataset card), manifest.json, plan.json; a local path, a "
                            "shared file system, or an object-store prefix (s3://BUCKET/PREFIX, gs://...)")
    seed: int = Field(0, description="run seed; copied into generation.seed and pairing.seed")
    shard_size: int = Field(16, gt=0, description="prompts per shard: the unit of streaming, commit and resume")
    max_error_rate: float = Field(
        0.5, ge=0, le=1, description="fail the job when more than this share of prompts are errors")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    rewarding: RewardingConfig = Field(default_factory=RewardingConfig)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="object-store endpoint and credentials for s3:// locations "
        "(default: the standard AWS variables); keys never reach a manifest, plan.json or log")
    training: TrainingConfig | None = Field(
        None, description="DPO on each round's pairs (training.model is set to the round's sampling policy); "
        "null = data only")
    evaluation: EvaluationConfig | None = Field(
        None, description="after each round: trained policy vs SFT on held-out prompts; needs training")
    rounds: int = Field(1, ge=1, description="iterative RS-DPO: round i+1 samples from round i's policy")
    round_reference: RoundReference = Field(RoundReference.SFT, description="sft | previous (DPO reference)")

    @model_validator(mode="after")
    def _cross_stage(self) -> RunConfig:
        for name in SEEDED_SECTIONS:
            if (section := getattr(self, name)) is not None:
                section.seed = self.seed
        if self.training is not None:  # pairs are checked at the length and template they are trained at
            if self.pairing.max_length is None:
                self.pairing.max_length = self.training.max_length
            if self.pairing.tokenizer is None:
                self.pairing.tokenizer = self.training.model
        if self.evaluation is not None and "rewarding" not in self.evaluation.model_fields_set:
            # the evaluation's training reward is the run's reward (it was MiniLM whatever the run scored with)
            self.evaluation.rewarding = self.rewarding.model_copy(deep=True)
        problems = []
        if self.training is not None and storage.is_remote(self.output_dir):
            problems.append(
                f"output_dir={self.output_dir!r} with a `training:` section: the chain writes each round's policy, "
                f"a model folder that vLLM and transformers load from a path, under output_dir. Give a path on "
                f"shared storage, or run the data job here with training=null and train on its pairs with "
                f"`python -m cluster.train --input {self.output_dir}/pairs --output /mnt/shared/policy` "
                f"(cluster/OPERATIONS.md 'Where data lives')")
        if self.rewarding.max_length < self.generation.max_tokens:
            problems.append(
                f"rewarding.max_length={self.rewarding.max_length} < generation.max_tokens="
                f"{self.generation.max_tokens}: the reward model would only see part of each response; "
                f"raise rewarding.max_length")
        if self.resources.sampler_num_gpus and "tensor_parallel_size" in self.generation.vllm and \
                self.generation.vllm["tensor_parallel_size"] > max(1, int(self.resources.sampler_num_gpus)):
            problems.append(
                "generation.vllm.tensor_parallel_size exceeds resources.sampler_num_gpus: each sampler actor "
                "needs one GPU per tensor-parallel rank")
        if (self.rounds > 1 or self.evaluation is not None) and self.training is None:
            problems.append("rounds > 1 and evaluation need a `training:` section (what would they evaluate?)")
        if self.evaluation is not None:
            problems += self._heldout_rules(self.evaluation.prompts)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _heldout_rules(self, eval_prompts: list[PromptsConfig]) -> list[str]:
        """An evaluation prompt set drawn from the training prompts' source by the held-out split must
        be the complement of the training split: training prompts use split=train, and both cut at the
        same heldout_fraction (the run's, copied into the evaluation's; a different one set there is
        refused: the two sets would overlap)."""
        problems = []
        for n, pc in enumerate(eval_prompts):
            if pc.source != self.prompts.source or pc.split is not Split.HELDOUT:
                continue
            if self.prompts.split is not Split.TRAIN:
                problems.append(f"prompts.split must be `train` when evaluating on the {pc.source} held-out "
                                f"split (evaluation.prompts[{n}]), or held-out prompts would leak into the pairs")
            if "heldout_fraction" in pc.model_fields_set and pc.heldout_fraction != self.prompts.heldout_fraction:
                problems.append(
                    f"evaluation.prompts[{n}].heldout_fraction={pc.heldout_fraction} differs from "
                    f"prompts.heldout_fraction={self.prompts.heldout_fraction}: the held-out prompts would "
                    f"overlap the training prompts. Drop it there (the evaluation takes the run's) or set both "
                    f"to the same value")
            pc.heldout_fraction = self.prompts.heldout_fraction
        return problems

    def fingerprint(self) -> str:
        """What must match for a resumed run to extend, not contradict, earlier shards."""
        keep = {
            "prompts": self.prompts.model_dump(mode="json"),
            "generation": self.generation.model_dump(mode="json", exclude={"vllm", "engine_in_process"}) | {
                "vllm": {k: v for k, v in self.generation.vllm.items() if k not in VLLM_RUNTIME_ONLY}},
            "rewarding": self.rewarding.model_dump(mode="json", exclude={"batch_size", "max_batch_tokens", "max_padding", "device"}),
            "pairing": self.pairing.model_dump(mode="json", exclude={"license"}),  # the card's, not the pairs' 
            "shard_size": self.shard_size,
        }
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def out(self) -> str:
        """The run folder: a local path or an object-store URI (rsdpo/storage.py)."""
        return self.output_dir


def _section_models() -> dict[str, type[BaseModel]]:
    """RunConfig's sections and their models, read from its own fields (`training: X | None` -> X)."""
    sections = {}
    for name, field in RunConfig.model_fields.items():
        models = [a for a in (get_args(field.annotation) or (field.annotation,))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            sections[name] = models[0]
    return sections


SECTIONS = _section_models()


def stage_config(section: str, path: str | Path | None, overrides: list[str] | dict | None = None) -> BaseModel:
    """The config a stage entry point runs with (`python -m generation|rewarding|pairing|training`,
    `training.eval`, `cluster.train`): `overrides` are the stage's own keys (`k=4`, `eta=0.9`).

    Given a run config, the whole run is validated (every section, the cross-stage rules, the run's
    seed carried into the stage) with the stage's overrides applied to its section, so a stage run
    alone means what the same section means inside the job. A run config without this (optional)
    section gives the stage its defaults plus overrides, with the run's seed. Any other YAML file is
    the stage's own config."""
    model = SECTIONS[section]
    data = read_yaml(path) if path else {}
    if not (set(data) & (set(RunConfig.model_fields) - set(model.model_fields))):
        return load_config(model, path, overrides)
    over = dict(overrides if isinstance(overrides, dict) else parse_overrides(overrides or []))
    top = {k: over.pop(k) for k in ("seed",) if k in over}  # the run's seed is the stage's
    source = f"{path} + overrides" if overrides else str(path)
    run = validate(RunConfig, deep_merge(data, top), source)
    storage.configure(run.storage)  # the stage reads and writes where the run's storage section says
    current = getattr(run, section)
    if current is None:
        stage = validate(model, over, source)
        if section in SEEDED_SECTIONS:
            stage.seed = run.seed
        return stage
    if not over:
        return current
    merged = run.model_dump(mode="json") | {section: deep_merge(current.model_dump(mode="json"), over)}
    return getattr(validate(RunConfig, merged, source), section)
