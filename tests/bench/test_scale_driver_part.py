"""The scale bench's driver part on a few hundred prompts: it calls the product's own driver
functions (scan, plan, resume check, commit, totals) with rows shaped like the job's, so a change
to what the commit task reads from a shard's row breaks it here, not only in `make bench`."""

from bench.scale_bench import part_driver


def test_driver_part_runs_every_phase_and_balances(tmp_path):
    res = part_driver(600, 120, tmp_path)
    assert set(res["phases"]) == {"load_validate", "plan", "write_plan_json", "resume_check", "totals_manifest"}
    assert res["prompts"] == 600 and res["shards"] >= 5  # shard_size 128 at most
    assert res["plan_json_bytes"] > 0
    assert all(p["wall_s"] >= 0 and p["peak_rss_mib"] > 0 for p in res["phases"].values())
