"""`python -m pairing` (plain, sweep, validate) and the dataset card, on small scored folders."""

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairing.__main__ import main
from pairing.config import PairingConfig
from pairing.pairs import make_pairs
from pairing.schema import CHOSEN, PAIRS_SCHEMA, REJECTED
from rewarding.schema import REWARD_MEAN, SCORED_SCHEMA
from rsdpo.manifest import read_manifest, write_manifest
from rsdpo.shards import read_shards, shard_path, write_shard

ROOT = Path(__file__).resolve().parents[2]


def scored_folder(tmp_path: Path, build, scale: float = 1.0, nan_error: str | None = None) -> Path:
    """Two shards (stems 00000, 00003), 52 prompts, two bad rows, and an upstream manifest. The NaN row has
    no error unless `nan_error` is given: make_pairs must catch it; `validate` reports it as a violation."""
    d = tmp_path / "scored"
    write_shard(build.random(30, 6, seed=10, scale=scale, prefix="a"), shard_path(d, "shard-00000"), SCORED_SCHEMA)
    bad = build.table([build.row("b-err", [], texts=[], error="sampling: timeout"),
                       build.row("b-nan", [0.0, float("nan")], error=nan_error)])
    write_shard(pa.concat_tables([build.random(20, 6, seed=11, scale=scale, prefix="b"), bad]),
                shard_path(d, "shard-00003"), SCORED_SCHEMA)
    write_manifest(d, {"stage": "scored", "models": {"policy": {"path": "tiny-policy", "sha256": "abc"},
                                                      "reward": {"path": "tiny-rm", "sha256": "def"}}})
    return d


def test_cli_subprocess_writes_shards_manifest_and_card(tmp_path, build):
    scored = scored_folder(tmp_path, build)
    out = tmp_path / "pairs"
    proc = subprocess.run([sys.executable, "-m", "pairing", "--input", str(scored), "--output", str(out),
                           "tau=0.5", "eta=0.9"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "52 prompts ->" in proc.stdout and "2 errored" in proc.stdout
    assert sorted(p.name for p in (out / "data").iterdir()) == ["shard-00000.parquet", "shard-00003.parquet"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", "manifest.json", "reward_spread.png"]
    pairs = read_shards(out, PAIRS_SCHEMA)
    manifest = read_manifest(out)
    assert manifest["config"]["pairing"]["tau"] == 0.5 and manifest["config"]["pairing"]["eta"] == 0.9
    assert math.isclose(manifest["raw_threshold"], 0.5 * math.log(9))
    c = manifest["counts"]
    assert (c["prompts_in"], c["pairs"], c["prompts_errored"]) == (52, pairs.num_rows, 2)
    assert manifest["inputs"] == ["../scored"] and manifest["models"]["reward"]["path"] == "tiny-rm"
    assert {e["prompt_id"] for e in manifest["errors"]} == {"b-err", "b-nan"}
    card = (out / "README.md").read_text()
    for needle in ("rs-dpo", "eta = 0.9", "tau = 0.5", "tiny-rm", "load_dataset(", "Made by `python -m pairing`",
                   'read_parquet("path/to/this/folder/data")', "| `chosen_index` |", "reward_spread.png"):
        assert needle in card, needle
    assert (out / "reward_spread.png").stat().st_size > 0
    # the same shard pairs identically in-process with the stem-derived shuffle seed
    assert main(["validate", str(out)]) == 0


def test_config_error_exits_2(tmp_path, build, capsys):
    scored = scored_folder(tmp_path, build)
    assert main(["--input", str(scored), "--output", str(tmp_path / "p"), "eta=0.5"]) == 2
    err = capsys.readouterr().err
    assert "eta = 0.5" in err and "0.5 < eta < 1" in err
    assert not (tmp_path / "p").exists()


def test_warning_when_most_prompts_get_no_pair(tmp_path, build, capsys):
    scored = scored_folder(tmp_path, build, scale=0.1)
    assert main(["--input", str(scored), "--output", str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err
    assert "warning: only" in err and "would give about 50% of prompts a pair" in err
    assert read_manifest(tmp_path / "p")["warnings"]


def test_validate_accepts_good_folders(tmp_path, build, capsys):
    scored = scored_folder(tmp_path, build, nan_error="scoring: non-finite reward")
    assert main(["--input", str(scored), "--output", str(tmp_path / "p"), "tau=0.4"]) == 0
    capsys.readouterr()
    assert main(["validate", str(scored)]) == 0
    assert main(["validate", str(tmp_path / "p")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("ok:") and "scored" in lines[0]
    assert lines[1].startswith("ok:") and "rs-dpo rule checked at tau=0.4, eta=0.85" in lines[1]


def _break(tmp_path, build, capsys, kind: str) -> str:
    """Make a valid folder, break one invariant, return validate's stderr (asserting exit 1)."""
    scored = scored_folder(tmp_path, build, nan_error="scoring: non-finite reward")
    out = tmp_path / "p"
    assert main(["--input", str(scored), "--output", str(out), "tau=0.4"]) == 0
    target = shard_path(out, "shard-00003")
    match kind:
        case "identical-texts":
            t = pq.read_table(target)
            t = t.set_column(t.schema.get_field_index(REJECTED), REJECTED, t.column(CHOSEN))
            pq.write_table(t, target)
        case "duplicate-pair":
            t = pq.read_table(target)
            pq.write_table(pa.concat_tables([t, t.slice(0, 1)]), target)
        case "rs-dpo-rule":
            m = read_manifest(out)
            m["config"]["pairing"]["eta"] = 0.99
            (out / "manifest.json").write_text(json.dumps(m))
        case "duplicate-prompt-id" | "stats-mismatch":
            target = shard_path(scored, "shard-00003")
            t = pq.read_table(target)
            if kind == "duplicate-prompt-id":
                t = pa.concat_tables([t, pq.read_table(shard_path(scored, "shard-00000")).slice(2, 1)])
            else:
                t = t.set_column(t.schema.get_field_index(REWARD_MEAN), REWARD_MEAN,
                                 pa.array([99.0] * t.num_rows))
            pq.write_table(t, target)
            out = scored
    capsys.readouterr()
    assert main(["validate", str(out)]) == 1
    return capsys.readouterr().err


@pytest.mark.parametrize("kind", ["identical-texts", "duplicate-pair", "rs-dpo-rule", "duplicate-prompt-id",
                                  "stats-mismatch"])
def test_validate_names_file_row_and_violation(tmp_path, build, capsys, kind):
    err = _break(tmp_path, build, capsys, kind)
    assert re.search(rf"/shard-0000[03]\.parquet: row \d+: {kind}: ", err), err


def test_validate_reports_nan_reward_without_error(tmp_path, build, capsys):
    assert main(["validate", str(scored_folder(tmp_path, build))]) == 1
    assert "row 21: non-finite-reward" in capsys.readouterr().err


def test_sweep_report_and_monotone_counts(tmp_path, build, capsys):
    scored = scored_folder(tmp_path, build)
    report = tmp_path / "report"
    assert main(["sweep", "--input", str(scored), "--output", str(report), "--eta", "0.8,0.85,0.9",
                 "--tau", "0.4,0.8,1.2"]) == 0
    with open(report / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    for tau in ("0.4", "0.8", "1.2"):
        counts = [int(r["pairs"]) for r in rows if r["tau"] == tau]     # in eta order
        assert counts == sorted(counts, reverse=True), f"pairs rise with eta at tau={tau}: {counts}"
    for eta in ("0.8", "0.85", "0.9"):
        counts = [int(r["pairs"]) for r in rows if r["eta"] == eta]     # in tau order
        assert counts == sorted(counts, reverse=True)
    one = next(r for r in rows if r["eta"] == "0.85" and r["tau"] == "0.8")
    direct = make_pairs(read_shards(scored, SCORED_SCHEMA), PairingConfig(tau=0.8))
    assert int(one["pairs"]) == direct.stats["pairs"] > 0
    assert int(one["prompts_with_pairs"]) == direct.stats["prompts_with_pairs"]
    assert math.isclose(float(one["raw_threshold"]), 0.8 * math.log(0.85 / 0.15))
    readme = (report / "README.md").read_text()
    assert "tau * ln(eta / (1 - eta))" in readme and "| 0.85 | 0.8 | 1.388 |" in readme
    for png in ("pairs_vs_eta.png", "reward_spread.png", "lengths.png"):
        assert (report / png).stat().st_size > 0


def test_sweep_refuses_other_strategies(tmp_path, build, capsys):
    scored = scored_folder(tmp_path, build)
    assert main(["sweep", "--input", str(scored), "--output", str(tmp_path / "r"), "strategy=best-worst"]) == 2
    assert "only rs-dpo" in capsys.readouterr().err


def test_pair_validate_and_sweep_take_object_store_uris(s3_bucket, build, capsys):
    """The pairing CLI on a real S3 server: every input and output an s3:// URI (rsdpo/storage.py)."""
    from rsdpo import storage

    run = f"{s3_bucket}/run"
    scored = f"{run}/scored"
    write_shard(build.random(30, 6, seed=10, prefix="a"), shard_path(scored, "shard-00000"), SCORED_SCHEMA)
    write_manifest(scored, {"stage": "scored", "models": {"reward": {"path": "tiny-rm", "sha256": "def"}}})
    assert main(["--input", scored, "--output", f"{run}/pairs", "tau=0.5"]) == 0
    assert main(["validate", f"{run}/pairs"]) == 0 and "ok: " in capsys.readouterr().out
    assert main(["sweep", "--input", scored, "--output", f"{run}/sweep", "--eta", "0.8,0.9", "--tau", "0.5"]) == 0
    names = {storage.relative(p, run) for p in storage.list_files(run, recursive=True)}
    assert {"pairs/data/shard-00000.parquet", "pairs/manifest.json", "pairs/README.md", "sweep/sweep.csv",
            "sweep/README.md", "sweep/pairs_vs_eta.png"} <= names
    manifest = read_manifest(f"{run}/pairs")
    assert manifest["inputs"] == ["../scored"] and manifest["models"]["reward"]["path"] == "tiny-rm"
    assert manifest["counts"]["pairs"] == read_shards(f"{run}/pairs", PAIRS_SCHEMA).num_rows > 0
