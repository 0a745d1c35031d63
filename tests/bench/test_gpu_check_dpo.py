"""bench/gpu_check.py's DPO part, run here on CPU in fp32 (the GPU check runs it in bf16): the real
training stage under DeepSpeed ZeRO-2, a world of one, so the command line it builds keeps working
on the machine where it is first run for real."""

from types import SimpleNamespace

from bench.gpu_check import dpo_part


def test_dpo_part_trains_under_zero2(tiny_policy, tmp_path):
    res = dpo_part(SimpleNamespace(dpo_steps=2), tiny_policy, tmp_path, bf16=False)
    assert "skipped" not in res, res.get("skipped")
    assert res["steps"] == 2 and res["deepspeed"] == "zero2" and res["bf16"] is False
    assert res["train_loss"] > 0
    assert {r["metric"] for r in res["metrics"]} >= {"DPO ZeRO-2 fp32 steps/s"}
