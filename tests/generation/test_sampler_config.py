"""The sampler's safe default holds through the vLLM pass-through (fast tier): `vllm.load_format`
cannot bring back pickle weights unless allow_pickle_weights is set."""

import pytest

from generation.config import GenerationConfig
from generation.sampler import engine_kwargs
from rsdpo.cli import ConfigError, load_config


def test_vllm_pass_through_cannot_override_the_safetensors_load_format():
    # Before, `vllm: {load_format: pt}` replaced load_format=safetensors in the engine arguments.
    with pytest.raises(ConfigError, match=r"vllm = .*load_format='pt' may load pickle weights.*"
                                          r"allow_pickle_weights=true"):
        load_config(GenerationConfig, None, ["vllm.load_format=pt"])
    with pytest.raises(ConfigError, match="load_format='auto'"):  # auto falls back to *.bin / *.pt files
        load_config(GenerationConfig, None, ["vllm.load_format=auto"])
    assert engine_kwargs(GenerationConfig(vllm={"load_format": "safetensors"}), cpu=True)["load_format"] == "safetensors"
    allowed = GenerationConfig(allow_pickle_weights=True, vllm={"load_format": "pt"})
    assert engine_kwargs(allowed, cpu=False)["load_format"] == "pt"


def test_engine_runs_in_process_on_cpu_by_default_and_a_set_variable_wins(monkeypatch):
    from cluster.config import RunConfig
    from generation.sampler import MULTIPROCESS_ENV, RESERVED_CPU_ENV, engine_env

    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    monkeypatch.delenv(RESERVED_CPU_ENV, raising=False)
    default = GenerationConfig()
    assert engine_env(default, cpu=True, exclusive_cpu=False) == {MULTIPROCESS_ENV: "0"}
    assert engine_env(default, cpu=False, exclusive_cpu=False) == {}  # GPU: vLLM's own processes
    assert engine_env(default, cpu=True, exclusive_cpu=True) == {MULTIPROCESS_ENV: "0", RESERVED_CPU_ENV: "0"}
    assert engine_env(GenerationConfig(engine_in_process=False), cpu=True, exclusive_cpu=False) == {MULTIPROCESS_ENV: "1"}
    assert engine_env(GenerationConfig(engine_in_process=True), cpu=False, exclusive_cpu=False) == {MULTIPROCESS_ENV: "0"}
    monkeypatch.setenv(MULTIPROCESS_ENV, "1")  # the operator's own setting
    assert engine_env(default, cpu=True, exclusive_cpu=False) == {}
    # where the engine runs does not change the samples: a folder resumes across the setting
    base = {"generation": {"model": "/m"}, "rewarding": {"model": "/r"}, "output_dir": "/o"}
    assert RunConfig(**base).fingerprint() == \
        RunConfig(**(base | {"generation": {"model": "/m", "engine_in_process": False}})).fingerprint()
