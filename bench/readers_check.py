"""Open a finished run's shard folders with the readers other teams use, and print each one's row
count beside the manifest's, so a consumer sees at a glance that every reader gets every row.

    .venv/bin/python bench/readers_check.py outputs/default/round-1     # after make run
    .venv/bin/python bench/readers_check.py outputs/pipeline            # after make pipeline

Exit status 1 when a reader's count differs from the manifest's. (tests/integration/test_pipeline.py
asserts the same on a small pipeline run; this is for a real run folder.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXPECTED = {"pairs": "pairs", "scored": "rows_out"}  # the manifest count each folder's rows add up to


def counts(run: Path, sub: str) -> dict[str, int]:
    import datasets
    import duckdb
    import pandas
    import polars
    import pyarrow.dataset
    import pyarrow.parquet

    folder, data = run / sub, run / sub / "data"
    return {
        "pandas.read_parquet(data/)": len(pandas.read_parquet(data)),
        "pyarrow.parquet.read_table(data/)": pyarrow.parquet.read_table(data).num_rows,
        "pyarrow.dataset.dataset(data/)": pyarrow.dataset.dataset(data).count_rows(),
        "duckdb read_parquet('data/*.parquet')": duckdb.sql(f"select count(*) from read_parquet('{data}/*.parquet')")
        .fetchall()[0][0],
        "polars.read_parquet(data/)": polars.read_parquet(data).height,
        "datasets.load_dataset(folder)": datasets.load_dataset(str(folder), split="train").num_rows,
        "datasets.load_dataset('parquet', data_dir=data/)": datasets.load_dataset(
            "parquet", data_dir=str(data), split="train").num_rows,
        f"datasets.load_dataset(run, '{sub}')": datasets.load_dataset(str(run), sub, split="train").num_rows,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    run, ok = Path(argv[0]), True
    for sub, key in EXPECTED.items():
        want = json.loads((run / sub / "manifest.json").read_text())["counts"][key]
        print(f"{sub}: manifest counts.{key} = {want}")
        for reader, got in counts(run, sub).items():
            ok &= got == want
            print(f"  {reader}: {got} rows{'' if got == want else '  <-- differs'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
