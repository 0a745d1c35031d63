"""Shared fixtures: tiny models built offline once per session."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    from common.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_policy"))


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory):
    from common.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_rm"), reward=True)
