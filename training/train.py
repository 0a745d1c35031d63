"""DPO on pairs shards: a thin script around TRL's DPOTrainer (we do not write a trainer), shaped like
TRL's own trl/scripts/dpo.py: build the DPOConfig, the trainer, train, save.

    python -m training --input PAIRS --output MODEL [--config F] [key=value ...]
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m training --input PAIRS --output MODEL deepspeed=zero3

PAIRS is a pairs shard folder or file (pairing/schema.py), local or an object-store URI (s3://, gs://,
hdfs://, file://, or any fsspec scheme): one code path reads both. MODEL receives

    MODEL/                       the final policy: safetensors + config + tokenizer + chat template
                                 (vLLM and transformers load it as is), and manifest.json
    MODEL/checkpoints/checkpoint-N   Trainer checkpoints (weights + optimizer + RNG) every save_steps
    MODEL/.cache/                the shuffled pairs as Arrow + TRL's tokenized / reference log-prob caches
                                 (deleted when the run completes)

Re-running the same command after a crash or kill resumes from the newest checkpoint (existing=resume);
a completed output is left as is. The same function runs one process, under torchrun, and on Ray Train
workers (cluster/train.py). Beside it: training/data.py reads and caches the pairs,
training/checkpoints.py holds the output folder's resume policy, training/distributed.py the rank and
DeepSpeed set-up.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from rsdpo.assets import model_identity, resolve_model
from rsdpo.cli import ConfigError
from rsdpo.errors import InputError
from rsdpo.manifest import write_manifest
from training.checkpoints import (
    CACHE,
    CHECKPOINTS,
    STATUS_COMPLETE,
    check_same_run,
    completed_run,
    prepare_output,
    work_record,
)
from training.config import DeepSpeed, TrainingConfig
from training.data import cache_pairs, pair_counts, read_pairs, shuffle
from training.distributed import init_deepspeed_comm, is_main_process, log, setup_process


def check_dpo_keys(config: TrainingConfig) -> dict:
    """Field types of trl.DPOConfig, after refusing keys it does not have (callers run this before
    hours of data generation, not after)."""
    import dataclasses

    from trl import DPOConfig

    types = {f.name: f.type for f in dataclasses.fields(DPOConfig)}
    unknown = sorted(set(config.dpo_kwargs()) - set(types))
    if unknown:
        raise ConfigError(f"training.dpo: unknown trl.DPOConfig key(s) {unknown} (trl {_version('trl')}); "
                          f"see the DPOConfig / TrainingArguments reference for the names")
    return types


def dpo_config(config: TrainingConfig, output: Path):
    """trl.DPOConfig from the pass-through `dpo` dict plus the fields TrainingConfig owns."""
    from trl import DPOConfig

    types = check_dpo_keys(config)
    kwargs = config.dpo_kwargs()
    for key, value in kwargs.items():
        # YAML 1.1 reads `1e-3` (no dot) as a string; DPOConfig would fail deep inside the optimizer.
        t = types[key]
        if isinstance(value, str) and (t is float or float in getattr(t, "__args__", ()) or t == "float"):
            try:
                kwargs[key] = float(value)
            except ValueError:
                raise ConfigError(f"training.dpo.{key} = {value!r}: expected a number") from None
    import torch

    if not torch.cuda.is_available():
        # TRL defaults to bf16 mixed precision, which transformers refuses on a CPU-only machine.
        kwargs.setdefault("bf16", False)
        # Without use_cpu, accelerate picks no backend when it finds no GPU and reports a world of one
        # process even under torchrun (DeepSpeed then sees 2 and the batch arithmetic breaks). With it,
        # accelerate sets up gloo (MULTI_CPU) and the Trainer shards the data across the workers.
        kwargs.setdefault("use_cpu", True)
    ds_file = config.deepspeed.config_file()
    return DPOConfig(
        **kwargs,
        output_dir=str(output / CHECKPOINTS),
        beta=config.beta,
        max_length=config.max_length,
        precompute_ref_log_probs=config.precompute_ref_log_probs,
        seed=config.seed,
        deepspeed=str(ds_file) if ds_file else None,
        # TRL loads the policy (and a reference it builds itself) with these; transformers would
        # otherwise fall back to pickle weights when a folder has no safetensors.
        model_init_kwargs={"dtype": config.dtype, "use_safetensors": not config.allow_pickle_weights},
    )


def _version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)


def train(config: TrainingConfig, pairs: str, output: str | Path) -> dict[str, Any]:
    """Train the policy on the pairs under `pairs`, write the final model + manifest to `output`.

    Runs as one process, as each torchrun rank, or inside a Ray Train worker (torch.distributed already
    initialised there). Returns the manifest record (every rank; only rank 0 writes it).
    """
    setup_process(deepspeed=config.deepspeed is not DeepSpeed.NONE)
    output = Path(output).expanduser().resolve()
    policy_path = resolve_model(config.model)
    ref_path = resolve_model(config.reference_model) if config.reference_model else None
    if ref_path is not None and ref_path.resolve() == policy_path.resolve():
        ref_path = None  # the same weights: let TRL use the policy's initial state as the reference
    for path in (policy_path, ref_path):
        if path is not None:
            check_weights_format(path, config.allow_pickle_weights)

    t0 = time.perf_counter()
    table, digest = read_pairs(pairs)
    if table.num_rows == 0:
        raise InputError(f"{pairs}: 0 pairs. Pairing emitted nothing: lower eta / tau for this reward "
                         f"model's scale (see the pairing manifest) or sample more responses per prompt")
    models = {"policy_in": model_identity(policy_path), "reference": model_identity(ref_path or policy_path)}
    work = work_record(config, digest, models["policy_in"]["sha256"], models["reference"]["sha256"],
                       world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if (done := completed_run(config, output, work)) is not None:
        return done

    resume_from = prepare_output(config, output)
    args = dpo_config(config, output)  # sets up torch.distributed (accelerate) when launched distributed
    # Everyone waits for rank 0's `existing=restart` deletion before writing anything into `output`.
    args.distributed_state.wait_for_everyone()
    if config.deepspeed is not DeepSpeed.NONE:
        init_deepspeed_comm()

    check_same_run(output, work, resume_from)
    table = shuffle(table, config.seed)
    counts = pair_counts(table)
    with args.main_process_first(local=True, desc="cache pairs"):
        arrow = cache_pairs(table, digest, output / CACHE, config.seed)
    from datasets import Dataset

    dataset = Dataset.from_file(str(arrow))
    log(f"{counts['pairs']} pairs from {counts['prompts']} prompts ({pairs}); world size {args.world_size}, "
        f"deepspeed {config.deepspeed.value}")

    trainer = make_trainer(config, args, dataset, policy_path, ref_path)
    setup_s = time.perf_counter() - t0  # data + models + (with precompute) the reference pass

    if resume_from:
        log(f"resuming from {resume_from}")
    result = trainer.train(resume_from_checkpoint=resume_from)
    save_policy(trainer, config, policy_path, output)

    record = {
        "stage": "training",
        "status": STATUS_COMPLETE,
        "input": str(pairs),
        "output": str(output),
        "config": config.model_dump(mode="json"),
        "dpo_config": {k: v for k, v in args.to_dict().items() if k in config.dpo_kwargs()},
        "world_size": args.world_size,
        "work": work,
        "models": {**models, "policy_out": None},
        "counts": counts,
        "resumed_from": resume_from,
        "metrics": {
            **result.metrics,
            "global_step": trainer.state.global_step,
            "setup_s": round(setup_s, 3),
            "last_log": next((h for h in reversed(trainer.state.log_history) if "loss" in h), None),
        },
    }
    if is_main_process():
        record["models"]["policy_out"] = model_identity(output)
        shutil.rmtree(output / CACHE, ignore_errors=True)
        write_manifest(output, record)
        log(f"saved the policy to {output} (step {trainer.state.global_step}, "
            f"loss {result.metrics.get('train_loss')})")
    args.distributed_state.wait_for_everyone()
    return record


def check_weights_format(path: Path, allow_pickle: bool) -> None:
    """Refuse, before any work, a model folder whose weights are only pickle files (unless allowed):
    transformers would load them, and unpickling a file can run arbitrary code."""
    if allow_pickle or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
    raise ConfigError(f"{path}: no *.safetensors weights ({', '.join(pickles) or 'no weights file'} only). "
                      f"Training loads safetensors only, since unpickling .bin/.pt weights can run arbitrary "
                      f"code: convert the folder (save_pretrained writes safetensors), or set "
                      f"training.allow_pickle_weights=true for weights you trust")


def make_trainer(config: TrainingConfig, args, dataset, policy_path: Path, ref_path: Path | None):
    """TRL's DPOTrainer on the policy folder, with the frozen reference and LoRA the config asks for."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if tokenizer.chat_template is None:
        raise ValueError(f"{policy_path}: the tokenizer has no chat template; the pairs are conversational, "
                         f"so give a chat (SFT) model or add a template to its tokenizer_config")
    ref_model = None
    if ref_path is not None:
        # Loaded after DPOConfig: under ZeRO-3 transformers builds it inside zero.Init, partitioned.
        ref_model = AutoModelForCausalLM.from_pretrained(
            ref_path, dtype=getattr(torch, config.dtype) if config.dtype != "auto" else "auto",
            use_safetensors=not config.allow_pickle_weights)
    peft_config = None
    if config.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **config.lora)
    return DPOTrainer(model=str(policy_path), ref_model=ref_model, args=args, train_dataset=dataset,
                      processing_class=tokenizer, peft_config=peft_config)


def save_policy(trainer, config: TrainingConfig, policy_path: Path, output: Path) -> None:
    """Write the trained policy as a plain HF folder (safetensors, tokenizer, chat template).

    With LoRA the adapter is merged into the base weights, so vLLM loads the folder like any model.
    Every rank calls this: under ZeRO-3 the full weights are gathered collectively.
    """
    if config.lora is None:
        trainer.save_model(str(output))
        return
    adapter = output / CACHE / "adapter"
    trainer.save_model(str(adapter))
    if is_main_process():
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32,
                                                    use_safetensors=not config.allow_pickle_weights)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        merged.save_pretrained(output, safe_serialization=True)
        trainer.processing_class.save_pretrained(output)
    trainer.args.distributed_state.wait_for_everyone()
