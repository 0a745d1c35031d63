"""Real DPO runs on a tiny model (integration tier): one process with LoRA, ZeRO-3 under torchrun,
ZeRO-2 on Ray Train, resume after a kill, the saved policy loading in transformers, and in vLLM through
training.eval (which also exercises the evaluation end to end).

    python -m pytest tests/integration/test_training.py
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rsdpo.manifest import read_manifest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TINY_RUN = ["max_length=64", "dpo.per_device_train_batch_size=4", "dpo.logging_steps=1"]


def subprocess_env() -> dict[str, str]:
    """For `python -m training` / torchrun / Ray children: the repo importable, offline, CPU DeepSpeed.

    One OpenMP thread per process: on a small shared CPU box a 2-thread kernel stalls whenever another
    process holds a core (a tiny-model forward went from 10 ms to 370 ms), which made run times swing 10x.
    """
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
            "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stderr[-20000:]}"
    return proc


def assert_trained_policy(out: Path, base: Path, steps: int, world_size: int) -> None:
    """A plain HF folder (no adapter, no DeepSpeed shards) whose weights moved away from the SFT model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = read_manifest(out)
    assert m["status"] == "complete" and m["metrics"]["global_step"] == steps
    assert m["world_size"] == world_size and m["counts"]["pairs"] == 48
    assert m["models"]["policy_in"]["sha256"] != m["models"]["policy_out"]["sha256"]
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    assert not (out / ".cache").exists()
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    sft = AutoModelForCausalLM.from_pretrained(base).state_dict()
    assert trained.keys() == sft.keys()
    assert all(trained[k].shape == sft[k].shape for k in sft)  # ZeRO-3 gathered full tensors
    assert any(not torch.equal(trained[k], sft[k]) for k in sft)


@pytest.fixture(scope="module")
def lora_run(tiny_policy, pairs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "policy"
    cmd = [sys.executable, "-m", "training", "--input", str(pairs_dir), "--output", str(out),
           f"model={tiny_policy}", *TINY_RUN, "dpo.max_steps=3", "dpo.learning_rate=1e-3",
           "lora.r=4", "lora.target_modules=[q_proj,v_proj]"]
    return cmd, out, run(cmd)


def test_one_process_lora_saves_a_merged_policy(lora_run, tiny_policy):
    cmd, out, _ = lora_run
    assert_trained_policy(out, tiny_policy, steps=3, world_size=1)
    t0 = time.perf_counter()
    again = run(cmd)  # the same command on a completed output is a no-op
    assert "already holds a completed run" in again.stderr and time.perf_counter() - t0 < 60


def test_zero3_two_workers_torchrun(tiny_policy, pairs_dir, tmp_path):
    """precompute off: TRL builds the reference under zero.Init, the case that failed before
    init_deepspeed_comm (DESIGN.md "Training on CPU").

    The extension cache holds the lock a worker killed while JIT-building DeepSpeed's shm op leaves
    behind: with that build still on, both workers would wait on it until the timeout."""
    out = tmp_path / "policy"
    stale = tmp_path / "torch_extensions" / "deepspeed_shm_comm"
    stale.mkdir(parents=True)
    (stale / "lock").touch()
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "training", "--input", str(pairs_dir), "--output", str(out), f"model={tiny_policy}",
                *TINY_RUN, "dpo.max_steps=3", "dpo.learning_rate=1e-3", "deepspeed=zero3",
                "precompute_ref_log_probs=false"], env={"TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")})
    assert "world size 2, deepspeed zero3" in proc.stderr
    assert_trained_policy(out, tiny_policy, steps=3, world_size=2)


def test_zero2_two_workers_ray_train(tiny_policy, pairs_dir, tmp_path):
    out = tmp_path / "policy"
    proc = run([sys.executable, "-m", "cluster.train", "--input", str(pairs_dir), "--output", str(out),
                f"model={tiny_policy}", *TINY_RUN, "dpo.max_steps=3", "dpo.learning_rate=1e-3",
                "deepspeed=zero2", "num_workers=2"], timeout=400)
    assert "[cluster.train]" in proc.stdout
    assert_trained_policy(out, tiny_policy, steps=3, world_size=2)


def test_rerun_after_kill_resumes_from_last_checkpoint(tiny_policy, pairs_dir, tmp_path):
    out = tmp_path / "policy"
    cmd = [sys.executable, "-m", "training", "--input", str(pairs_dir), "--output", str(out),
           f"model={tiny_policy}", "max_length=64", "dpo.per_device_train_batch_size=2", "dpo.max_steps=12",
           "dpo.save_steps=2", "dpo.save_total_limit=1", "dpo.logging_steps=2"]
    first = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 240
    while not list((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert first.poll() is None, f"first run ended before its first checkpoint:\n{first.stderr.read()[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = min(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*"))
    assert killed_at < 12 and read_manifest(out) is None

    second = run(cmd)
    assert "resuming from" in second.stderr
    assert "Computing reference log probs" not in second.stderr  # the precompute cache was reused
    m = read_manifest(out)
    resumed_step = int(m["resumed_from"].rsplit("-", 1)[1])
    assert killed_at <= resumed_step < 12  # continued from the kill, not from step 0
    assert m["metrics"]["global_step"] == 12
    final = json.loads((out / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())
    assert final["global_step"] == 12


def test_saved_policy_serves_in_vllm_eval(lora_run, tiny_policy, tiny_reward_model, tmp_path):
    """training.eval samples the SFT model and the saved policy with vLLM (generation.Sampler) and
    scores both with the training reward and a judge (real Scorers): the saved folder loads in vLLM
    as is, and the report compares the two under each scorer, with lengths and pair accuracies."""
    pytest.importorskip("vllm")
    from rsdpo.tiny import build_tiny_llama

    _, policy, _ = lora_run
    judge = build_tiny_llama(tmp_path / "judge", reward=True, seed=3)
    out = tmp_path / "eval"
    env = {k: v for k, v in subprocess_env().items() if k != "OMP_NUM_THREADS"}  # vLLM sets its own threads
    proc = subprocess.run(
        [sys.executable, "-m", "training.eval", "--sft", str(tiny_policy), "--policy", str(policy),
         "--output", str(out), "prompts=[{source: builtin:mt_bench, limit: 6}]", "generation.k=2",
         "generation.max_tokens=8", "generation.max_model_len=256", "rewarding.backend=classifier",
         f"rewarding.model={tiny_reward_model}", f"judges=[{{backend: classifier, model: {judge}}}]",
         "judge_check_prompts=3", "bootstrap=200"],
        env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-8000:]
    report = json.loads((out / "report.json").read_text())
    assert list(report["results"]) == ["reward", "judge"]
    for result in report["results"].values():
        assert result["overall"]["prompts"] == 6 and result["overall"]["compared"] == 6
        assert 0 <= result["overall"]["win_rate_lc"] <= 1
    assert report["scorers"]["judge"]["pair_accuracy"]["pairs"] >= 3 * 5
    assert report["length"]["overall"]["tokens_sft_mean"] > 0
    assert "[training.eval] reward (" in proc.stdout and "[training.eval] judge (" in proc.stdout
    assert "[training.eval] length: SFT" in proc.stdout
    assert (out / "rewards.png").stat().st_size > 1000
    manifest = read_manifest(out)
    assert manifest["models"]["policy"]["path"] == str(policy)
