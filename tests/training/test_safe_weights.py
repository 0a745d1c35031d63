"""Safe defaults of the training stage (fast tier): a model folder whose weights are only pickle
files is refused before any work unless training.allow_pickle_weights is set, and TRL itself loads
models with use_safetensors, so nothing behind the check falls back to unpickling."""

import shutil

import pytest
import torch

from rsdpo.cli import ConfigError, load_config
from training.config import TrainingConfig


@pytest.fixture(scope="module")
def pickle_only_model(tiny_policy, tmp_path_factory):
    """The tiny policy with its weights as pytorch_model.bin (a pickle) and no *.safetensors."""
    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp("pickle_model")
    for f in tiny_policy.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    torch.save(load_file(tiny_policy / "model.safetensors"), out / "pytorch_model.bin")
    return out


def test_a_pickle_only_policy_is_refused_before_any_work(pickle_only_model, pairs_dir, tmp_path):
    from training.train import train

    out = tmp_path / "policy"
    with pytest.raises(ConfigError, match=r"no \*\.safetensors weights \(pytorch_model\.bin only\).*"
                                          r"training\.allow_pickle_weights=true"):
        train(TrainingConfig(model=str(pickle_only_model)), str(pairs_dir), out)
    assert not out.exists()


def test_a_pickle_only_reference_is_refused(pickle_only_model, tiny_policy, pairs_dir, tmp_path):
    from training.train import train

    with pytest.raises(ConfigError, match=str(pickle_only_model)):
        train(TrainingConfig(model=str(tiny_policy), reference_model=str(pickle_only_model)), str(pairs_dir),
              tmp_path / "policy")


def test_trl_loads_the_policy_with_safetensors_only(pickle_only_model, tmp_path):
    """TRL builds the policy (and the reference it makes itself) from DPOConfig.model_init_kwargs; without
    use_safetensors transformers silently unpickles pytorch_model.bin."""
    from trl.trainer.utils import create_model_from_path

    from training.train import dpo_config

    args = dpo_config(TrainingConfig(), tmp_path)
    with pytest.raises(OSError, match="model.safetensors"):
        create_model_from_path(str(pickle_only_model), **args.model_init_kwargs)
    allowed = dpo_config(TrainingConfig(allow_pickle_weights=True), tmp_path)
    assert create_model_from_path(str(pickle_only_model), **allowed.model_init_kwargs) is not None


def test_dpo_may_not_replace_the_model_loading_arguments():
    with pytest.raises(ConfigError, match=r"dpo.model_init_kwargs -> use `dtype / allow_pickle_weights`"):
        load_config(TrainingConfig, overrides=["dpo.model_init_kwargs={use_safetensors: false}"])
