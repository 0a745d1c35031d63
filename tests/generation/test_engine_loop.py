"""generation.sampler.EngineLoop: the thread that owns the vLLM engine and serves concurrent calls.

The loop's own logic (routing finished requests to their callers, staggered admission, per-request
rejections, engine death, shutdown) is tested against a small deterministic stand-in for
vllm's LLMEngine (add_request / step). The real engine under the loop is exercised by the
pipeline integration test, which compares the pipeline's samples with a stand-alone run.
"""

import threading
from types import SimpleNamespace

import pytest

from generation.sampler import EngineFailed, EngineLoop


class StepEngine:
    """Each request is ("name", steps): it finishes `steps` engine steps after it was added."""

    def __init__(self, fail_at_step: int | None = None):
        self.active: dict[str, list] = {}  # rid -> [steps left, name]
        self.admitted_at: dict[str, int] = {}
        self.step_no = 0
        self.fail_at_step = fail_at_step
        self.batch_sizes: list[int] = []
        self.paused = False

    def sleep(self, level, mode):
        assert (level, mode) == (0, "keep") and not self.paused
        self.paused = True

    def wake_up(self, tags):
        assert tags == ["scheduling"] and self.paused
        self.paused = False

    def add_request(self, rid, prompt, params):
        assert self.paused, "a request reached the engine while its scheduler runs"
        name, steps = prompt
        if steps <= 0:
            raise ValueError(f"{name}: nothing to generate")
        self.active[rid] = [steps, name]
        self.admitted_at[name] = self.step_no

    def step(self):
        assert not self.paused
        self.step_no += 1
        if self.fail_at_step is not None and self.step_no >= self.fail_at_step:
            raise RuntimeError("engine core died")
        self.batch_sizes.append(len(self.active))
        done = []
        for rid, st in list(self.active.items()):
            st[0] -= 1
            if st[0] == 0:
                del self.active[rid]
                done.append(SimpleNamespace(request_id=rid, finished=True, name=st[1], step=self.step_no))
        return done


def loop_for(engine, stagger=0):
    return EngineLoop(SimpleNamespace(llm_engine=engine), stagger_steps=stagger)


def params(n):
    return [SimpleNamespace(output_kind=None) for _ in range(n)]


def test_each_caller_gets_its_own_results_in_order():
    engine = StepEngine()
    loop = loop_for(engine)
    results = {}

    def call(shard, lengths):
        prompts = [(f"{shard}-{i}", n) for i, n in enumerate(lengths)]
        results[shard] = [o.name for o in loop.run(prompts, params(len(prompts)))]

    threads = [threading.Thread(target=call, args=(s, lens)) for s, lens in
               (("a", [5, 1, 3]), ("b", [2, 6]), ("c", [4]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    loop.close()
    assert results == {"a": ["a-0", "a-1", "a-2"], "b": ["b-0", "b-1"], "c": ["c-0"]}
    # the calls shared engine steps: some step ran requests of more than one call
    assert max(engine.batch_sizes) > 3


def test_staggered_admission_spaces_calls_apart():
    engine = StepEngine()
    loop = loop_for(engine, stagger=4)
    gate = threading.Barrier(3)

    def call(shard):
        gate.wait()
        loop.run([(shard, 12)], params(1))

    threads = [threading.Thread(target=call, args=(s,)) for s in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    loop.close()
    starts = sorted(engine.admitted_at.values())
    # the first call starts at once; the others join at least 4 steps after the previous admission
    assert starts[0] <= 1 and starts[1] - starts[0] >= 4 and starts[2] - starts[1] >= 4


def test_a_rejected_request_comes_back_as_its_exception():
    loop = loop_for(StepEngine())
    out = loop.run([("ok", 2), ("bad", 0), ("ok2", 1)], params(3))
    loop.close()
    assert out[0].name == "ok" and out[2].name == "ok2"
    assert isinstance(out[1], ValueError) and "nothing to generate" in str(out[1])


def test_engine_death_fails_every_waiting_call_and_later_ones():
    loop = loop_for(StepEngine(fail_at_step=3))
    errors = []

    def call(name):
        try:
            loop.run([(name, 10)], params(1))
        except EngineFailed as e:
            errors.append(str(e))

    threads = [threading.Thread(target=call, args=(n,)) for n in "pq"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(errors) == 2 and all("engine core died" in e for e in errors)
    with pytest.raises(EngineFailed, match="failed earlier"):
        loop.run([("late", 1)], params(1))


def test_close_stops_the_thread_and_drops_the_engine():
    loop = loop_for(StepEngine())
    assert loop.run([], []) == []
    loop.close()
    assert loop.engine is None and not loop._thread.is_alive()


def test_progress_hears_of_every_request_as_it_finishes_rejected_ones_too():
    engine = StepEngine()
    loop = loop_for(engine)
    ticks = []   # (engine step when told, n)
    out = loop.run([("a", 3), ("bad", 0), ("b", 1)], params(3), on_done=lambda n: ticks.append((engine.step_no, n)))
    loop.close()
    assert [o.name for o in (out[0], out[2])] == ["a", "b"]
    # the rejected request at admission (step 0), then b after step 1 and a after step 3
    assert ticks == [(0, 1), (1, 1), (3, 1)]


def test_an_engine_that_dies_while_a_call_is_admitted_fails_that_call_too():
    class DiesAtAdmission(StepEngine):
        def add_request(self, rid, prompt, params):
            if prompt[0] == "dead":  # not a request rejection: the engine itself is gone
                raise RuntimeError("engine core died")
            super().add_request(rid, prompt, params)

    loop = loop_for(DiesAtAdmission())
    done = []

    def call():
        with pytest.raises(EngineFailed, match="engine core died"):
            loop.run([("dead", 3), ("ok", 2)], params(2))
        done.append(True)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout=10)
    assert done == [True], "the call whose admission hit the dead engine was never answered"


def test_a_step_that_never_returns_after_the_core_died_still_fails_every_call(monkeypatch):
    """vLLM's client marks itself dead when its engine core process is killed, but a step already
    waiting for that core's output never returns: the loop's watchdog answers the callers."""
    monkeypatch.setattr(EngineLoop, "WATCH_S", 0.05)

    class KilledCore(StepEngine):
        def __init__(self):
            super().__init__()
            self.dead = threading.Event()
            self.engine_core = SimpleNamespace(ensure_alive=self.ensure_alive)

        def ensure_alive(self):
            if self.dead.is_set():
                raise RuntimeError("EngineCore died")

        def step(self):
            if self.step_no == 2:
                self.dead.set()
                threading.Event().wait()  # blocks forever, as SyncMPClient.get_output does then
            return super().step()

    loop = loop_for(KilledCore())
    errors = []

    def call(name):
        try:
            loop.run([(name, 10)], params(1))
        except EngineFailed as e:
            errors.append(str(e))

    threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in "pq"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(errors) == 2 and all("EngineCore died" in e for e in errors)
    loop.close()  # returns although the loop thread is stuck in the dead engine


def test_admission_and_steps_are_timed_apart():
    """busy_s counts engine steps only, admit_s the time adding requests: a slow add_request shows
    in admit_s and not in busy_s (the pipeline reports both; cluster/pipeline.py _rates)."""
    import time

    class SlowAdmit(StepEngine):
        def add_request(self, rid, prompt, params):
            time.sleep(0.02)
            super().add_request(rid, prompt, params)

    loop = loop_for(SlowAdmit())
    loop.run([("a", 1), ("b", 1), ("c", 1)], params(3))
    loop.close()
    assert loop.admit_s >= 0.06
    assert loop.busy_s < 0.05
