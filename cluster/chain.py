"""The whole RS-DPO chain, round by round: sample -> score -> pair (the streaming data job),
DPO on the pairs (Ray Train, DeepSpeed ZeRO), evaluation against the SFT policy on held-out
prompts. Round i+1 samples from round i's policy; the DPO reference stays the SFT policy unless
`round_reference: previous`.

    OUT/round-1/{scored,pairs,policy,eval}/, OUT/round-2/{...,eval-vs-previous}/, OUT/manifest.json (the chain)
    OUT/rounds.{md,json,png}   with rounds > 1: every round against SFT and against the round before,
                               under every scorer (win rate and length-controlled win rate, intervals)

    python -m cluster.run --config cluster/configs/default.yaml [--fresh]    # with a training: section

Every step resumes, and reuses only what is provably the same work: committed shards are skipped
(plan.json's fingerprint), a finished policy is reused when its manifest's work record (training
config, pairs bytes, base and reference weights, world size) equals this round's, an evaluation
report when its config (scorers included) and the baseline's and policy's weights are this round's.
Anything else is redone, and so is every later round (it sampled from what was redone). `--fresh`
redoes every round from scratch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cluster.config import RoundReference, RunConfig
from cluster.pipeline import run_pipeline
from cluster.session import connect
from rsdpo import storage
from rsdpo.assets import model_identity, resolve_model
from rsdpo.manifest import read_manifest, write_manifest
from training.checkpoints import CHECKPOINTS, RUN_RECORD, STATUS_COMPLETE, differences, work_record
from training.config import EvaluationConfig, Existing
from training.data import read_pairs

# What a round writes beside the data job's scored/ and pairs/ (which run_pipeline(fresh=True) clears).
ROUND_OUTPUTS = ("policy", "eval", "eval-vs-previous", ".ray_train")


def weights_sha(model: str | Path) -> str:
    return model_identity(resolve_model(str(model)))["sha256"]


def training_differences(out_model: Path, work: dict) -> list[str] | None:
    """None when `out_model` holds a finished policy of exactly `work`; else what differs from the run
    found there (finished, or killed with its checkpoints), [] when there is none."""
    done = read_manifest(out_model)
    run_file = out_model / CHECKPOINTS / RUN_RECORD
    before = done.get("work", {}) if done else json.loads(run_file.read_text()) if run_file.exists() else None
    if before is None:
        return []
    diff = differences(before, work)
    if not diff and done and done.get("status") == STATUS_COMPLETE and (out_model / "config.json").exists():
        return None
    return diff


def reusable_report(eval_dir: Path, config: EvaluationConfig, models: dict[str, str]) -> dict | None:
    """The report in `eval_dir` when its manifest says it compared these models' weights (sha256 by
    role: sft, policy) under this evaluation config (which names every scorer); else None."""
    manifest = read_manifest(eval_dir)
    report_file = eval_dir / "report.json"
    if manifest is None or not storage.exists(report_file) or manifest.get("config") != config.model_dump(mode="json"):
        return None
    recorded = manifest.get("models", {})
    if any(recorded.get(role, {}).get("sha256") != sha for role, sha in models.items()):
        return None
    return json.loads(storage.read_text(report_file))


def run_chain(cfg: RunConfig, *, fresh: bool = False) -> dict:
    from training.train import check_dpo_keys

    check_dpo_keys(cfg.training)  # a typo in training.dpo fails now, not after the data job
    sft = cfg.generation.model
    policy = sft
    rounds, trends = [], []  # trends: one row per (round, baseline) evaluation, for OUT/rounds.{md,json,png}
    redo = fresh  # once a round is redone, every later round is (it sampled from the old policy)
    for i in range(1, cfg.rounds + 1):
        rdir = Path(cfg.out) / f"round-{i}"  # a local folder: the chain's policies are model folders
        if redo:
            for sub in ROUND_OUTPUTS:
                shutil.rmtree(rdir / sub, ignore_errors=True)
        print(f"[rsdpo] ===== round {i}/{cfg.rounds}: sampling from {policy} =====", flush=True)
        data_cfg = cfg.model_copy(deep=True, update={"output_dir": str(rdir), "training": None,
                                                     "evaluation": None, "rounds": 1})
        data_cfg.generation.model = policy
        data = run_pipeline(data_cfg, fresh=redo)
        record = {"round": i, "sampled_from": policy, "dir": str(rdir), "data": data["counts"]}

        tcfg = cfg.training.model_copy(deep=True)
        tcfg.model = policy
        tcfg.reference_model = sft if cfg.round_reference == RoundReference.SFT else policy
        out_model = rdir / "policy"
        work = work_record(tcfg, read_pairs(str(rdir / "pairs"))[1], weights_sha(tcfg.model),
                           weights_sha(tcfg.reference_model), world_size=tcfg.num_workers)
        diff = training_differences(out_model, work)
        if diff is None:
            print(f"[rsdpo] round {i}: reusing the policy in {out_model} (same work)", flush=True)
            done = read_manifest(out_model)
        else:
            from cluster.train import train_on_ray

            if diff:
                # A policy (or checkpoints) of other work: never report it as this config's.
                print(f"[rsdpo] round {i}: {out_model} holds a run of other work (differs in: "
                      f"{', '.join(diff)}); training again", flush=True)
                tcfg.existing = Existing.RESTART
            redo = True
            connect(cfg.resources.num_cpus)
            print(f"[rsdpo] round {i}: DPO on {data['counts']['pairs']} pairs, {tcfg.num_workers} workers, "
                  f"deepspeed={tcfg.deepspeed}", flush=True)
            done = train_on_ray(tcfg, rdir / "pairs", out_model, run_name=f"round-{i}")
        record["training"] = {"output": str(out_model), "metrics": done.get("metrics"),
                              "counts": done.get("counts")}
        policy = str(out_model)

        if cfg.evaluation is not None:
            from training.eval import evaluate, summary

            # against SFT, and from round 2 on against the round before (the policy this round sampled from)
            baselines = [("SFT", sft, "eval")] + ([(f"round {i - 1}", tcfg.model, "eval-vs-previous")] if i > 1 else [])
            for name, baseline, folder in baselines:
                report_file = rdir / folder / "report.json"
                report = reusable_report(rdir / folder, cfg.evaluation,
                                         {"sft": weights_sha(baseline), "policy": weights_sha(policy)})
                if report is None:
                    print(f"[rsdpo] round {i}: evaluating {policy} against {baseline} on held-out prompts",
                          flush=True)
                    report = evaluate(cfg.evaluation, baseline, policy, rdir / folder)
                else:
                    print(f"[rsdpo] round {i}: reusing the evaluation in {rdir / folder} (same config and models)",
                          flush=True)
                for line in summary(report):
                    print(f"[rsdpo] round {i} vs {name}: {line}", flush=True)
                record["evaluation" if folder == "eval" else "evaluation_vs_previous"] = {
                    "report": str(report_file), "plot": str(rdir / folder / "rewards.png"),
                    "overall": {n: r["overall"] for n, r in report["results"].items()},
                    "warnings": report["warnings"]}
                trends.append({"label": f"round {i} vs {name}", "pairs": data["counts"]["pairs"],
                               "dpo_steps": (done.get("metrics") or {}).get("global_step"),
                               "length": report["length"]["overall"], "scorers": report["scorers"],
                               "results": {n: r["overall"] for n, r in report["results"].items()}})
        rounds.append(record)
        write_manifest(cfg.out, {"stage": "chain", "config": cfg.model_dump(mode="json"), "rounds": rounds})
    if cfg.rounds > 1 and trends:
        from training.eval import plot_results, results_table

        storage.write_text(Path(cfg.out) / "rounds.json", json.dumps(trends, indent=2) + "\n")
        storage.write_text(Path(cfg.out) / "rounds.md", results_table(
            trends, "Rounds", "round", "Each round's policy against SFT and against the round before."))
        plot_results(trends, Path(cfg.out) / "rounds.png", "round")
    return {"rounds": rounds, "manifest": str(Path(cfg.out) / "manifest.json")}
