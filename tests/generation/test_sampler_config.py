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
