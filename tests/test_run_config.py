import pytest

from cluster.config import RunConfig
from rsdpo.cli import ConfigError, load_config, parse_overrides


def test_overrides_parse_dotted_yaml_scalars():
    assert parse_overrides(["generation.k=4", "pairing.eta=0.9", "generation.vllm.enforce_eager=true", "x=[a,b]"]) == {
        "generation": {"k": 4, "vllm": {"enforce_eager": True}}, "pairing": {"eta": 0.9}, "x": ["a", "b"]}
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["k8"])


def test_all_config_errors_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, ["generation.k=1", "pairing.eta=0.4", "pairing.tau=0", "bogus=1"])
    msg = str(e.value)
    assert "4 config error(s)" in msg
    for field in ("generation.k", "pairing.eta", "pairing.tau", "bogus: unknown key"):
        assert field in msg


def test_cross_stage_rules_and_seed_propagation():
    cfg = load_config(RunConfig, None, ["seed=7"])
    assert cfg.generation.seed == 7 and cfg.pairing.seed == 7
    with pytest.raises(ConfigError, match="rewarding.max_length"):
        load_config(RunConfig, None, ["generation.max_tokens=600", "rewarding.max_length=128"])


def test_fingerprint_tracks_what_changes_outputs():
    a = RunConfig()
    assert a.fingerprint() == RunConfig().fingerprint()
    assert a.fingerprint() != load_config(RunConfig, None, ["generation.k=4"]).fingerprint()
    assert a.fingerprint() != load_config(RunConfig, None, ["seed=1"]).fingerprint()
    # engine knobs and batch sizes do not change outputs
    assert a.fingerprint() == load_config(RunConfig, None, ["generation.vllm.enforce_eager=false",
                                                            "rewarding.batch_size=8"]).fingerprint()


def test_chain_sections_are_checked_together():
    with pytest.raises(ConfigError, match="need a `training:` section"):
        load_config(RunConfig, None, ["rounds=2"])
    with pytest.raises(ConfigError, match="held-out prompts would leak"):
        load_config(RunConfig, None, ["training={}", "evaluation={}"])
    cfg = load_config(RunConfig, "cluster/configs/default.yaml")
    assert cfg.training.deepspeed == "zero2" and cfg.training.num_workers == 2
    assert cfg.prompts.split == "train" and cfg.evaluation is not None
    # training settings do not touch the data fingerprint: a resumed data job stays valid
    assert cfg.fingerprint() == load_config(RunConfig, "cluster/configs/default.yaml",
                                            ["training.beta=0.2"]).fingerprint()


@pytest.mark.parametrize("lines", [['{"prompt": ""}', "{bad"], []], ids=["all_bad", "empty"])
def test_job_without_a_usable_prompt_writes_the_quarantine_then_exits_2(tmp_path, capsys, lines):
    import json

    from cluster.run import main

    src, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    src.write_text("".join(line + "\n" for line in lines))
    # stops before any model is resolved or Ray starts
    rc = main([f"prompts.source={src}", f"output_dir={out}", "training=null", "evaluation=null"])
    err = capsys.readouterr().err
    assert rc == 2 and "no usable prompts" in err
    if lines:
        assert str(out / "quarantine.jsonl") in err
        assert sorted(json.loads(r)["line"] for r in (out / "quarantine.jsonl").read_text().splitlines()) == [
            f"{src}:1", f"{src}:2"]
    else:
        assert "holds no rows" in err


def test_evaluation_scores_with_the_runs_reward():
    """The evaluation's training reward is the run's `rewarding` section (the chain used the MiniLM
    default even when the run's reward was a classifier), unless evaluation.rewarding is set; a stage
    run alone (python -m training.eval --config RUN) gets the same."""
    cfg = load_config(RunConfig, "cluster/configs/default.yaml",
                      ["rewarding.backend=classifier", "rewarding.model=/models/rm", "rewarding.max_length=300"])
    ecfg = cfg.evaluation
    assert (ecfg.rewarding.backend, ecfg.rewarding.model, ecfg.rewarding.max_length) == ("classifier", "/models/rm", 300)
    assert [j.model for j in ecfg.judges] == ["builtin:smollm2-judge"]
    own = load_config(RunConfig, "cluster/configs/default.yaml",
                      ["rewarding.backend=classifier", "rewarding.model=/models/rm", "evaluation.rewarding.max_length=128"])
    assert own.evaluation.rewarding.model == "builtin:all-minilm-l6-v2"  # set explicitly: kept
    assert (cfg.pairing.max_length, cfg.pairing.tokenizer) == (256, "builtin:smollm2-135m-instruct")


def test_engine_settings_that_change_samples_are_in_the_fingerprint():
    """generation.vllm was left out whole: a resumed run with another dtype or quantization
    extended shards sampled under the old one."""
    a = RunConfig().fingerprint()
    for change in ("generation.vllm.dtype=float32", "generation.vllm.quantization=fp8",
                   "generation.vllm.kv_cache_dtype=fp8"):
        assert load_config(RunConfig, None, [change]).fingerprint() != a, change
    for same in ("generation.vllm.gpu_memory_utilization=0.9", "generation.vllm.max_num_seqs=64"):
        assert load_config(RunConfig, None, [same]).fingerprint() == a, same


def test_an_object_store_output_dir_is_a_run_folder_and_its_keys_stay_secret():
    cfg = load_config(RunConfig, None, ["output_dir=s3://bucket/rsdpo/run1", "storage.access_key_id=AKIDEXAMPLE123",
                                        "storage.secret_access_key=s3cr3t-value"])
    assert cfg.out == "s3://bucket/rsdpo/run1" and cfg.storage.secret_access_key.get_secret_value() == "s3cr3t-value"
    dumped = str(cfg.model_dump(mode="json"))            # what manifests record
    assert "AKIDEXAMPLE123" not in dumped and "s3cr3t-value" not in dumped
    assert cfg.fingerprint() == load_config(RunConfig, None, ["output_dir=s3://bucket/rsdpo/run1"]).fingerprint()
    with pytest.raises(ConfigError, match="policy, a model folder"):
        load_config(RunConfig, None, ["output_dir=s3://bucket/run", "training.num_workers=1"])


def test_evaluation_heldout_split_is_the_complement_of_the_training_prompts():
    """Before, the evaluation's AlpacaEval held-out split kept its own heldout_fraction (0.2): with
    prompts.heldout_fraction=0.4 the training split (the 60 % outside a 40 % bucket) and the evaluation
    set (a 20 % bucket) no longer partition the prompts, and nothing said so."""
    from generation.config import Split
    from generation.prompts import load_prompts

    cfg = load_config(RunConfig, "cluster/configs/default.yaml",
                      ["prompts.heldout_fraction=0.4", "prompts.subsets=null", "prompts.limit=null"])
    heldout = [pc for pc in cfg.evaluation.prompts if pc.split is Split.HELDOUT]
    assert [pc.heldout_fraction for pc in heldout] == [0.4]  # the run's, propagated
    train_ids = set(load_prompts(cfg.prompts).table.column("prompt_id").to_pylist())
    eval_ids = set(load_prompts(heldout[0]).table.column("prompt_id").to_pylist())
    assert train_ids and eval_ids and not train_ids & eval_ids
    assert len(train_ids | eval_ids) == 805  # together: all of AlpacaEval
    # A held-out fraction set on the evaluation's own prompt set that contradicts the run's is refused.
    with pytest.raises(ConfigError, match=r"evaluation.prompts\[0\].heldout_fraction=0.1 differs from "
                                          r"prompts.heldout_fraction=0.4: the held-out prompts would overlap"):
        load_config(RunConfig, "cluster/configs/default.yaml", [
            "prompts.heldout_fraction=0.4",
            "evaluation.prompts=[{source: builtin:alpaca_eval, split: heldout, heldout_fraction: 0.1}]"])
    # The same value, or another source, is fine.
    load_config(RunConfig, "cluster/configs/default.yaml", [
        "prompts.heldout_fraction=0.4", "evaluation.prompts=[{source: builtin:alpaca_eval, split: heldout, "
        "heldout_fraction: 0.4}, {source: builtin:mt_bench, heldout_fraction: 0.1}]"])


def test_custom_resources_pin_stages_and_refuse_rays_own():
    cfg = load_config(RunConfig, None, ["resources.sampler_resources.sampler_node=1",
                                        "resources.scorer_resources={scorer_node: 0.5}"])
    assert cfg.resources.sampler_resources == {"sampler_node": 1.0}
    assert cfg.resources.scorer_resources == {"scorer_node": 0.5}
    # placement does not change outputs: a run resumes on another layout
    assert cfg.fingerprint() == RunConfig().fingerprint()
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, ["resources.sampler_resources.GPU=1", "resources.scorer_resources.pool=0"])
    assert "resources.sampler_resources.GPU: Ray's own resource" in str(e.value)
    assert "resources.scorer_resources.pool = 0.0: must be > 0" in str(e.value)


def test_the_old_evaluation_section_names_are_refused_naming_the_new_ones():
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, ["evaluation.sampler.k=2", "evaluation.scorer.max_length=64"])
    assert "evaluation.sampler is now evaluation.generation" in str(e.value)
    assert "evaluation.scorer is now evaluation.rewarding" in str(e.value)
