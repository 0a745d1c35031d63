"""DPO on pairs shards: a thin script around TRL's DPOTrainer (we do not write a trainer).

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
workers (cluster/train.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from common.assets import model_identity, resolve_model
from common.cli import ConfigError
from common.files import TMP_SUFFIX, atomic_path
from common.manifest import read_manifest, write_manifest
from common.shards import ShardError, conform
from pairing.schema import CHOSEN_REWARD, PAIRS_SCHEMA, PROMPT_ID, REJECTED_REWARD, STRATEGY
from training.config import DeepSpeed, Existing, TrainingConfig

CHECKPOINTS = "checkpoints"
CACHE = ".cache"
STATUS_COMPLETE = "complete"


def log(msg: str) -> None:
    # Every rank runs this module; only the first speaks.
    if os.environ.get("RANK", "0") == "0":
        print(f"[training] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- data


def filesystem(source: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI; pyarrow's own filesystems first, else fsspec's."""
    if "://" not in source:
        return pafs.LocalFileSystem(), str(Path(source).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(source)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Schemes pyarrow does not know (memory://, az:// via adlfs, ...): wrap the fsspec filesystem.
        import fsspec

        fs, path = fsspec.core.url_to_fs(source)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def read_pairs(source: str) -> tuple[pa.Table, str]:
    """All complete pairs shards under `source` (a folder or one file), validated against PAIRS_SCHEMA.

    Returns the table and a sha256 of the shard bytes (it names the cached Arrow copy, so a changed
    input never reuses a stale tokenized or reference log-prob cache).
    """
    fs, path = filesystem(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{source}: no such pairs shard folder or file")
    if info.type == pafs.FileType.File:
        files = [path]
    else:
        files = sorted(
            f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=False))
            if f.type == pafs.FileType.File and f.path.endswith(".parquet") and not f.path.endswith(TMP_SUFFIX)
        )
    if not files:
        raise FileNotFoundError(f"{source}: no *.parquet pairs shards (run the pairing stage first)")
    digest = hashlib.sha256()
    tables = []
    for f in files:
        with fs.open_input_file(f) as fh:
            data = fh.read()
        digest.update(f.rsplit("/", 1)[-1].encode())
        digest.update(data)
        try:
            table = pq.read_table(pa.BufferReader(data))
        except pa.ArrowInvalid as e:
            raise ShardError(f"{f}: not a readable Parquet file ({e}); delete it and re-run pairing") from e
        tables.append(conform(table, PAIRS_SCHEMA, f))
    return pa.concat_tables(tables), digest.hexdigest()


def shuffle(table: pa.Table, seed: int) -> pa.Table:
    # TRL reads the dataset in order within an epoch unless the Trainer's sampler shuffles; shuffling
    # here makes the order independent of how pairing sharded its output.
    return table.take(np.random.default_rng(seed).permutation(table.num_rows))


def pair_counts(table: pa.Table) -> dict[str, Any]:
    gaps = np.asarray(table[CHOSEN_REWARD]) - np.asarray(table[REJECTED_REWARD])  # (n_pairs,) raw reward gaps
    return {
        "pairs": table.num_rows,
        "prompts": len(set(table[PROMPT_ID].to_pylist())),
        "by_strategy": dict(Counter(table[STRATEGY].to_pylist())),
        "reward_gap_mean": float(gaps.mean()) if len(gaps) else None,
    }


def cache_pairs(table: pa.Table, digest: str, cache: Path, seed: int) -> Path:
    """Write the shuffled pairs once as an Arrow stream file that `datasets.Dataset.from_file` maps.

    A file-backed dataset gives TRL a stable cache folder: its reference log-prob cache lands next to
    it, named by content, so every rank reads the same file and a resumed run skips the precompute.
    """
    path = cache / f"pairs-{digest[:16]}-seed{seed}.arrow"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return path


# ------------------------------------------------------------------------------------------ training


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
        model_init_kwargs={"dtype": config.dtype},
    )


def _version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)


def init_deepspeed_comm() -> None:
    """Initialise DeepSpeed's own comm layer before any model is built under `deepspeed.zero.Init`.

    On CPU, accelerate sets up torch.distributed itself (its MULTI_CPU branch) and never calls
    `deepspeed.init_distributed`, so `deepspeed.comm` stays uninitialised. ZeRO-3 loads models inside
    `zero.Init`, which parses the DeepSpeed config with `deepspeed.comm.get_world_size()`; with no comm
    backend that lookup fails and the config falls back to world_size 1, so the batch arithmetic the
    Trainer filled in for 2 workers no longer adds up: "train_batch_size is not equal to
    micro_batch_per_gpu * gradient_acc_step * world_size 8 != 4 * 1 * 1". Wrapping the existing
    torch.distributed group in DeepSpeed's comm layer fixes it. On GPU accelerate already did this and
    the call is a no-op.

    On CPU, DeepSpeed's comm layer also JIT-compiles its shared-memory all-reduce op on every start
    (40 s quiet, over 3 min on a busy 2-core box) under a file lock in ~/.cache/torch_extensions. That op
    only serves `inference_all_reduce`, which training never calls, and a worker killed mid-build leaves
    the lock behind, so every later run waits on it forever. Marking the op incompatible skips the build.
    """
    import deepspeed
    import deepspeed.comm
    import deepspeed.ops
    import torch

    if deepspeed.comm.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if not cuda:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo",
                               auto_mpi_discovery=False, verbose=False)


def last_checkpoint(ckpts: Path) -> str | None:
    """The newest complete checkpoint under `ckpts`, or None.

    The Trainer writes checkpoint-N in place and trainer_state.json last, so a run killed while saving
    leaves a folder without it: that one is skipped (and removed by rank 0, so it is written afresh).
    """
    found = sorted((int(m.group(1)), p) for p in ckpts.glob("checkpoint-*")
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, path in reversed(found):
        if (path / "trainer_state.json").exists():
            return str(path)
        log(f"skipping incomplete checkpoint {path} (no trainer_state.json: killed while saving)")
        if os.environ.get("RANK", "0") == "0":
            shutil.rmtree(path, ignore_errors=True)
    return None


def prepare_output(config: TrainingConfig, output: Path) -> str | None:
    """Apply `existing`; return the checkpoint to resume from, or None. Raises when refused."""
    ckpts = output / CHECKPOINTS
    ours = (output / "manifest.json").exists() or ckpts.exists() or (output / CACHE).exists()
    match config.existing:
        case Existing.FAIL:
            if output.exists() and any(output.iterdir()):
                raise FileExistsError(f"{output} is not empty and existing=fail; pick a new --output or set "
                                      f"existing=resume / existing=restart")
        case Existing.RESTART:
            if os.environ.get("RANK", "0") != "0":
                return None  # rank 0 decides and deletes; everyone waits for it before writing
            if ours:
                log(f"existing=restart: deleting {output}")
                shutil.rmtree(output)
            elif output.exists() and any(output.iterdir()):
                raise FileExistsError(f"{output} holds files this stage did not write; refusing to delete them")
        case Existing.RESUME:
            return last_checkpoint(ckpts) if ckpts.is_dir() else None
    return None


def check_same_run(output: Path, config: TrainingConfig, digest: str, resume_from: str | None) -> None:
    """Refuse to resume checkpoints that another model, objective, data or world size produced.

    `dpo` may change between attempts (e.g. a larger max_steps to train on); the rest may not, or the
    checkpoints would silently mix two runs.
    """
    path = output / CHECKPOINTS / "run.json"
    keys = {"model", "reference_model", "beta", "max_length", "precompute_ref_log_probs", "deepspeed", "lora",
            "dtype", "seed"}
    this = {"config": config.model_dump(mode="json", include=keys), "pairs_sha256": digest,
            "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if resume_from and path.exists():
        before = json.loads(path.read_text())
        diff = sorted(k for k in set(before["config"]) | set(this["config"])
                      if before["config"].get(k) != this["config"].get(k))
        diff += [k for k in ("pairs_sha256", "world_size") if before.get(k) != this[k]]
        if diff:
            raise ValueError(f"{output} holds checkpoints of a different run (differs in: {', '.join(diff)}); "
                             f"re-run with the same settings to resume, or existing=restart to start over")
    elif os.environ.get("RANK", "0") == "0":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(this, indent=2) + "\n")


def train(config: TrainingConfig, pairs: str, output: str | Path) -> dict[str, Any]:
    """Train the policy on the pairs under `pairs`, write the final model + manifest to `output`.

    Runs as one process, as each torchrun rank, or inside a Ray Train worker (torch.distributed already
    initialised there). Returns the manifest record (every rank; only rank 0 writes it).
    """
    import torch

    if not torch.cuda.is_available():
        # Must be set before deepspeed is first imported (accelerate/transformers import it lazily).
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if config.deepspeed is not DeepSpeed.NONE and "WORLD_SIZE" not in os.environ:
        # DeepSpeed wants a process group even for one process: make this a world of one.
        import socket

        with socket.socket() as s:  # a free port: other runs on this machine may hold 29500
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", port))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    output = Path(output).expanduser().resolve()
    done = read_manifest(output)
    if done and done.get("status") == STATUS_COMPLETE and config.existing is Existing.RESUME:
        log(f"{output} already holds a completed run (manifest.json); nothing to do "
            f"(existing=restart trains again)")
        return done

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    policy_path = resolve_model(config.model)
    ref_path = resolve_model(config.reference_model) if config.reference_model else None
    if ref_path is not None and ref_path.resolve() == policy_path.resolve():
        ref_path = None  # the same weights: let TRL use the policy's initial state as the reference

    resume_from = prepare_output(config, output)
    args = dpo_config(config, output)  # sets up torch.distributed (accelerate) when launched distributed
    # Everyone waits for rank 0's `existing=restart` deletion before writing anything into `output`.
    args.distributed_state.wait_for_everyone()
    if config.deepspeed is not DeepSpeed.NONE:
        init_deepspeed_comm()

    t0 = time.perf_counter()
    table, digest = read_pairs(pairs)
    if table.num_rows == 0:
        raise ValueError(f"{pairs}: 0 pairs. Pairing emitted nothing: lower eta / tau for this reward "
                         f"model's scale (see the pairing manifest) or sample more responses per prompt")
    check_same_run(output, config, digest, resume_from)
    table = shuffle(table, config.seed)
    counts = pair_counts(table)
    with args.main_process_first(local=True, desc="cache pairs"):
        arrow = cache_pairs(table, digest, output / CACHE, config.seed)
    dataset = Dataset.from_file(str(arrow))
    log(f"{counts['pairs']} pairs from {counts['prompts']} prompts ({pairs}); world size {args.world_size}, "
        f"deepspeed {config.deepspeed.value}")

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if tokenizer.chat_template is None:
        raise ValueError(f"{policy_path}: the tokenizer has no chat template; the pairs are conversational, "
                         f"so give a chat (SFT) model or add a template to its tokenizer_config")
    ref_model = None
    if ref_path is not None:
        # Loaded after DPOConfig: under ZeRO-3 transformers builds it inside zero.Init, partitioned.
        ref_model = AutoModelForCausalLM.from_pretrained(ref_path, dtype=getattr(torch, config.dtype)
                                                         if config.dtype != "auto" else "auto")
    peft_config = None
    if config.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **config.lora)

    trainer = DPOTrainer(model=str(policy_path), ref_model=ref_model, args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config)
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
        "models": {
            "policy_in": model_identity(policy_path),
            "reference": model_identity(ref_path or policy_path),
            "policy_out": None,
        },
        "counts": counts,
        "resumed_from": resume_from,
        "metrics": {
            **result.metrics,
            "global_step": trainer.state.global_step,
            "setup_s": round(setup_s, 3),
            "last_log": next((h for h in reversed(trainer.state.log_history) if "loss" in h), None),
        },
    }
    if args.process_index == 0:
        record["models"]["policy_out"] = model_identity(output)
        shutil.rmtree(output / CACHE, ignore_errors=True)
        write_manifest(output, record)
        log(f"saved the policy to {output} (step {trainer.state.global_step}, "
            f"loss {result.metrics.get('train_loss')})")
    args.distributed_state.wait_for_everyone()
    return record


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
    if trainer.args.process_index == 0:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        merged.save_pretrained(output, safe_serialization=True)
        trainer.processing_class.save_pretrained(output)
    trainer.args.distributed_state.wait_for_everyone()
