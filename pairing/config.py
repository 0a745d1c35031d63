"""Configuration of the pairing stage: which strategy turns k scored responses into preference pairs.

    python -m pairing --input SCORED --output PAIRS [--config FILE] [eta=0.9 tau=0.1 strategy=best-worst]

Imports only pydantic and the stdlib, so a composed run config can include it cheaply.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strategy(StrEnum):
    """How pairs are chosen among one prompt's eligible responses (see pairing/rules.py)."""

    RS_DPO = "rs-dpo"                        # Algorithm 1: every ordered (j, l) with sigmoid((r_j-r_l)/tau) > eta
    BEST_WORST = "best-worst"                # argmax vs argmin, one pair per prompt
    BEST_RANDOM = "best-random"              # argmax vs a seeded uniform pick among the lower-reward ones
    ALL_ABOVE_MARGIN = "all-above-margin"    # every ordered (j, l) with r_j - r_l > margin (raw units)
    SIGMA = "sigma"                          # argmax vs the response nearest mu - sigma_c * sigma


class PairingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = Field(
        Strategy.RS_DPO,
        description="pairing strategy: rs-dpo (paper, default), best-worst, best-random, all-above-margin, sigma",
    )
    tau: float = Field(
        1.0, gt=0, allow_inf_nan=False,
        description="rs-dpo temperature, in reward units: a pair needs r_j - r_l > tau * ln(eta / (1 - eta)). "
                    "Pick it for the reward model's scale (paper: 1.0 for raw RM logits).",
    )
    eta: float = Field(
        0.85, allow_inf_nan=False,
        description="rs-dpo acceptance level, strictly inside (0.5, 1): a pair needs sigmoid((r_j - r_l)/tau) > eta "
                    "(strict). Paper: 0.85. Higher eta -> fewer, more clearly separated pairs.",
    )
    margin: float = Field(
        0.0, ge=0, allow_inf_nan=False,
        description="all-above-margin: emit every ordered pair with r_j - r_l > margin (raw reward units, strict; "
                    "0 = every strictly better response)",
    )
    sigma_c: float = Field(
        2.0, ge=0, allow_inf_nan=False,
        description="sigma: the rejected response is the one nearest mu - sigma_c * sigma of the prompt's "
                    "eligible rewards (population std)",
    )
    seed: int = Field(
        0, description="run seed: best-random picks and the per-shard row shuffle derive from (seed, prompt_id / shard)",
    )
    dedup_responses: bool = Field(
        True, description="keep only the first of exact-duplicate response texts per prompt before pairing",
    )
    exclude_truncated: bool = Field(
        False, description="drop responses whose finish reason is 'length' (hit max_tokens) before pairing",
    )
    max_pairs_per_prompt: int | None = Field(
        None, ge=1,
        description="cap on pairs per prompt, keeping the largest raw reward gaps (None = no cap, as in the paper)",
    )
    license: str = Field(
        "other",
        description="license of the pairs, written to the dataset card (a Hub license id, e.g. cc-by-nc-4.0, "
                    "apache-2.0, other). The prompts' and the policy's licenses carry over to the pairs: pick one "
                    "both allow. The embedded default (AlpacaEval prompts, CC BY-NC 4.0; SmolLM2, Apache-2.0) "
                    "is cc-by-nc-4.0",
    )
    max_length: int | None = Field(
        None, ge=16,
        description="training length in tokens (prompt + answer, TRL keep_start): pairs whose chosen and rejected "
                    "are the same sequence once cut to it are dropped and counted (pairing/truncation.py). "
                    "null = not checked; a run config with a training section sets it to training.max_length",
    )
    tokenizer: str | None = Field(
        None, description="model folder (or builtin name) whose tokenizer and chat template render pairs for the "
                          "max_length check: the policy's; a run config sets it to training.model",
    )
    min_prompts_with_pairs_warn: float = Field(
        0.5, ge=0, le=1,
        description="warn (stderr + manifest) when fewer than this share of usable prompts yield a pair",
    )

    @field_validator("eta")
    @classmethod
    def _eta_in_open_interval(cls, eta: float) -> float:
        if eta <= 0.5:
            raise ValueError(
                f"eta={eta} must be > 0.5: sigmoid(-x) = 1 - sigmoid(x), so at eta <= 0.5 both (j, l) and (l, j) "
                f"of a pair would be accepted (and ties at eta < 0.5). Use 0.5 < eta < 1, e.g. eta=0.85 "
                f"(paper); for more pairs lower tau instead"
            )
        if eta >= 1:
            raise ValueError(
                f"eta={eta} must be < 1: sigmoid never exceeds 1, so no pair would ever be accepted. "
                f"Use 0.5 < eta < 1, e.g. eta=0.85 (paper)"
            )
        return eta
