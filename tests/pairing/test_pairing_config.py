"""PairingConfig: defaults, refusals with field + value + fix, overrides through rsdpo.cli."""

import pytest

from cluster.config import stage_config
from pairing.config import PairingConfig, Strategy
from rsdpo.cli import ConfigError, load_config


def test_defaults_are_the_papers():
    c = PairingConfig()
    assert (c.strategy, c.tau, c.eta, c.max_pairs_per_prompt) == (Strategy.RS_DPO, 1.0, 0.85, None)


@pytest.mark.parametrize("eta", [0.5, 0.3, 0.0])
def test_eta_at_or_below_half_is_refused_with_the_fix(eta):
    with pytest.raises(ConfigError) as e:
        load_config(PairingConfig, overrides=[f"eta={eta}"])
    msg = str(e.value)
    assert f"eta = {eta}" in msg and "both (j, l) and (l, j)" in msg and "0.5 < eta < 1" in msg


@pytest.mark.parametrize("eta", [1.0, 1.5])
def test_eta_at_or_above_one_is_refused(eta):
    with pytest.raises(ConfigError, match="sigmoid never exceeds 1"):
        load_config(PairingConfig, overrides=[f"eta={eta}"])


@pytest.mark.parametrize("tau", [0, -1])
def test_tau_must_be_positive(tau):
    with pytest.raises(ConfigError, match="tau"):
        load_config(PairingConfig, overrides=[f"tau={tau}"])


def test_all_errors_reported_at_once_and_unknown_keys_refused():
    with pytest.raises(ConfigError) as e:
        load_config(PairingConfig, overrides=["eta=0.4", "tau=0", "etaa=0.9", "strategy=best"])
    msg = str(e.value)
    assert "4 config error(s)" in msg and "etaa: unknown key" in msg and "strategy" in msg


def test_overrides_and_run_config_section(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("pairing:\n  tau: 0.05\n  strategy: sigma\ngeneration: {k: 4}\n")
    c = stage_config("pairing", f, ["eta=0.9", "max_pairs_per_prompt=3"])
    assert (c.strategy, c.tau, c.eta, c.max_pairs_per_prompt) == (Strategy.SIGMA, 0.05, 0.9, 3)
