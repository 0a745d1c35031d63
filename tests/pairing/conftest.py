"""Builders for small scored tables (rewarding.schema.SCORED_SCHEMA) used by the pairing tests."""

import numpy as np
import pyarrow as pa
import pytest

from generation import schema as g
from rewarding import schema as rs


def scored_row(prompt_id: str, rewards: list[float], texts: list[str] | None = None,
               finish: list[str] | None = None, error: str | None = None) -> dict:
    texts = [f"{prompt_id} reply {j}" for j in range(len(rewards))] if texts is None else texts
    finish = ["stop"] * len(texts) if finish is None else finish
    finite = [r for r in rewards if np.isfinite(r)]
    return {
        g.PROMPT_ID: prompt_id, g.PROMPT: [{"role": "user", "content": f"question {prompt_id}"}],
        g.REFERENCE: None, g.SOURCE: "test", g.RESPONSES: texts, g.FINISH_REASONS: finish,
        g.NUM_TOKENS: [len(t.split()) for t in texts], g.PROMPT_TOKENS: 3, g.SEED: 0, g.ERROR: error,
        rs.REWARDS: rewards,
        rs.REWARD_MEAN: float(np.mean(finite)) if finite else None,
        rs.REWARD_STD: float(np.std(finite)) if finite else None,
        rs.REWARD_MIN: min(finite) if finite else None, rs.REWARD_MAX: max(finite) if finite else None,
        rs.REWARD_TRUNCATED: 0,
    }


def scored_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=rs.SCORED_SCHEMA)


def random_scored(n: int, k: int, seed: int, scale: float = 1.0, prefix: str = "p") -> pa.Table:
    rng = np.random.default_rng(seed)
    return scored_table([scored_row(f"{prefix}{i}", (rng.normal(size=k) * scale).tolist(),
                                    [f"{prefix}{i} reply {j} " + "x" * int(rng.integers(0, 30)) for j in range(k)])
                         for i in range(n)])


@pytest.fixture
def build():
    """The builders, as a fixture: build.row(...), build.table(rows), build.random(n, k, seed)."""
    class Builders:
        row = staticmethod(scored_row)
        table = staticmethod(scored_table)
        random = staticmethod(random_scored)
    return Builders
