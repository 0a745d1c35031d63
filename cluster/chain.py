"""The whole RS-DPO chain, round by round: sample -> score -> pair (the streaming data job),
DPO on the pairs (Ray Train, DeepSpeed ZeRO), evaluation against the SFT policy on held-out
prompts. Round i+1 samples from round i's policy; the DPO reference stays the SFT policy unless
`round_reference: previous`.

    OUT/round-1/{scored,pairs,policy,eval}/, OUT/round-2/{...,eval-vs-previous}/, OUT/manifest.json (the chain)
    OUT/rounds.{md,json,png}   with rounds > 1: every round against SFT and against the round before,
                               under every scorer (win rate and length-controlled win rate, intervals)

Every step resumes: committed shards are skipped, training continues from its newest checkpoint,
a finished policy or evaluation report is reused.
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster.config import RoundReference, RunConfig
from cluster.pipeline import run_pipeline
from cluster.session import connect
from common import storage
from common.manifest import read_manifest, write_manifest


def run_chain(cfg: RunConfig, *, fresh: bool = False) -> dict:
    from training.train import check_dpo_keys

    check_dpo_keys(cfg.training)  # a typo in training.dpo fails now, not after the data job
    sft = cfg.generation.model
    policy = sft
    rounds, trends = [], []  # trends: one row per (round, baseline) evaluation, for OUT/rounds.{md,json,png}
    for i in range(1, cfg.rounds + 1):
        rdir = Path(cfg.out) / f"round-{i}"  # a local folder: the chain's policies are model folders
        print(f"[rsdpo] ===== round {i}/{cfg.rounds}: sampling from {policy} =====", flush=True)
        data_cfg = cfg.model_copy(deep=True, update={"output_dir": str(rdir), "training": None,
                                                     "evaluation": None, "rounds": 1})
        data_cfg.generation.model = policy
        data = run_pipeline(data_cfg, fresh=fresh)
        record = {"round": i, "sampled_from": policy, "dir": str(rdir), "data": data["counts"]}

        tcfg = cfg.training.model_copy(deep=True)
        tcfg.model = policy
        tcfg.reference_model = sft if cfg.round_reference == RoundReference.SFT else policy
        out_model = rdir / "policy"
        done = read_manifest(out_model)
        if done is None or not (out_model / "config.json").exists():
            from cluster.train import train_on_ray

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
                report = json.loads(storage.read_text(report_file)) if storage.exists(report_file) else {}
                if "results" not in report:  # none yet, or one written before judges existed
                    print(f"[rsdpo] round {i}: evaluating {policy} against {baseline} on held-out prompts",
                          flush=True)
                    report = evaluate(cfg.evaluation, baseline, policy, rdir / folder)
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
