import json
import os

import pytest

from rsdpo import manifest
from rsdpo.files import TMP_SUFFIX, atomic_path, clear_temp_files


def test_atomic_path_renames_into_place_when_the_block_ends(tmp_path):
    target = tmp_path / "plan.json"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(TMP_SUFFIX) and str(os.getpid()) in tmp.name
        assert tmp.name.startswith(".")  # directory readers (pyarrow, pandas, datasets) skip it
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the rename
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("stop", [ValueError("disk full"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_write_keeps_the_old_file_and_no_temp(tmp_path, stop):
    target = tmp_path / "plan.json"
    target.write_text("old")
    with pytest.raises(type(stop)), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise stop
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_an_interrupted_manifest_write_leaves_the_previous_manifest(tmp_path, monkeypatch):
    manifest.write_manifest(tmp_path, {"counts": {"rows": 1}})

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    # the interrupt lands after the temp file is written, just before the rename
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        manifest.write_manifest(tmp_path, {"counts": {"rows": 2}})
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"] == {"rows": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_clear_temp_files_removes_only_temps(tmp_path):
    (tmp_path / "shard-00000.parquet").write_bytes(b"done")
    (tmp_path / f".shard-00001.parquet.123{TMP_SUFFIX}").write_bytes(b"partial")
    clear_temp_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.parquet"]
