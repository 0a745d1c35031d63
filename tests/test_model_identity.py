"""rsdpo.assets.model_identity: the content hash that manifests record and a resumed run checks."""

import os

from rsdpo.assets import CACHED_HASH_MIN, model_identity


def _big(folder, fill: bytes):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    with open(folder / "model.safetensors", "wb") as f:
        f.write(b"\0" * (CACHED_HASH_MIN // 2))
        f.write(fill)  # the middle of a file over the cache threshold
        f.write(b"\0" * (CACHED_HASH_MIN // 2))


def test_a_change_in_the_middle_of_a_big_weight_file_changes_the_hash(tmp_path, monkeypatch):
    """Files over 64 MiB were hashed by their first and last 4 MiB: a fine-tune that rewrote
    the middle of a shard kept the old hash, and a resumed run mixed its samples with the old model's."""
    monkeypatch.setenv("RSDPO_CACHE", str(tmp_path / "cache"))
    _big(tmp_path / "a", b"\1" * 1024)
    _big(tmp_path / "b", b"\2" * 1024)
    assert model_identity(tmp_path / "a")["sha256"] != model_identity(tmp_path / "b")["sha256"]


def test_big_file_digests_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("RSDPO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    _big(folder, b"\1" * 1024)
    first = model_identity(folder)["sha256"]
    weights = folder / "model.safetensors"
    st = weights.stat()
    # same size, same mtime, other bytes: the cached digest answers (nothing re-read)
    with open(weights, "r+b") as f:
        f.seek(CACHED_HASH_MIN // 2)
        f.write(b"\3" * 1024)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert model_identity(folder)["sha256"] == first
    # a write that moves the mtime is hashed again
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert model_identity(folder)["sha256"] != first
