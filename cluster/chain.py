"""The whole RS-DPO chain, round by round: sample -> score -> pair (the streaming data job),
DPO on the pairs (Ray Train, DeepSpeed ZeRO), evaluation against the SFT policy on held-out
prompts. Round i+1 samples from round i's policy; the DPO reference stays the SFT policy unless
`round_reference: previous`.

    OUT/round-1/{scored,pairs,policy,eval}/, OUT/round-2/..., OUT/manifest.json (the chain)

Every step resumes: committed shards are skipped, training continues from its newest checkpoint,
a finished policy or evaluation report is reused.
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster.config import RoundReference, RunConfig
from cluster.pipeline import run_pipeline
from cluster.session import connect
from common.manifest import read_manifest, write_manifest
from training.config import EvalConfig


def evaluation_config(cfg: RunConfig) -> EvalConfig:
    """The run's evaluation, scoring with the run's own reward (`rewarding`) as the training reward
    unless `evaluation.scorer` was set explicitly."""
    if "scorer" in cfg.evaluation.model_fields_set:
        return cfg.evaluation
    return cfg.evaluation.model_copy(update={"scorer": cfg.rewarding.model_copy(deep=True)})


def run_chain(cfg: RunConfig, *, fresh: bool = False) -> dict:
    from training.train import check_dpo_keys

    check_dpo_keys(cfg.training)  # a typo in training.dpo fails now, not after the data job
    sft = cfg.generation.model
    policy = sft
    rounds = []
    for i in range(1, cfg.rounds + 1):
        rdir = cfg.out / f"round-{i}"
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

            report_file = rdir / "eval" / "report.json"
            report = json.loads(report_file.read_text()) if report_file.exists() else {}
            if "results" not in report:  # none yet, or one written before judges existed
                print(f"[rsdpo] round {i}: evaluating {policy} against {sft} on held-out prompts", flush=True)
                report = evaluate(evaluation_config(cfg), sft, policy, rdir / "eval")
            for line in summary(report):
                print(f"[rsdpo] round {i}: {line}", flush=True)
            record["evaluation"] = {"report": str(report_file), "plot": str(rdir / "eval" / "rewards.png"),
                                    "overall": {name: r["overall"] for name, r in report["results"].items()},
                                    "warnings": report["warnings"]}
        rounds.append(record)
        write_manifest(cfg.out, {"stage": "chain", "config": cfg.model_dump(mode="json"), "rounds": rounds})
    return {"rounds": rounds, "manifest": str(Path(cfg.out) / "manifest.json")}
