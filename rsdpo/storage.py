"""One storage layer for run data: prompts, shards, manifests, plan.json, quarantine.jsonl, dataset
cards, reports and sweep output, at a local path, on a shared file system, or under an object-store
URI (s3://bucket/prefix, gs://bucket/prefix), all through pyarrow.fs. Models are not run data: they
stay local folders (vLLM and transformers load from a path; cluster/OPERATIONS.md says how to stage
them on every node).

    from rsdpo import storage
    with storage.atomic_write("s3://bucket/run1/scored/shard-00000.parquet") as f:
        pq.write_table(table, f)                  # the object appears whole, or not at all
    storage.list_files("s3://bucket/run1/scored", (".parquet",))

One commit rule per backend, so a reader (or a resumed job) never takes a partial file as complete:
- a file system (local disk, NFS, Lustre, a mounted PVC): temp file beside the target, fsync,
  rename into place, fsync of the folder (rsdpo/files.py);
- an object store: the finished bytes are uploaded once (one PutObject for a small object, a
  multipart upload completed at the end for a large one); the store makes the object visible only
  when the upload completes, so nothing partial ever sits under a final name and there are no temp
  objects to clear. An interrupted multipart upload leaves invisible parts; a bucket lifecycle rule
  (AbortIncompleteMultipartUpload) removes them.

Endpoint and credentials come the standard way: the AWS variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION) and the SDK's default chain (profile, instance
role), or Google's application default credentials for gs://; or a run config's `storage:` section
(StorageConfig), handed to the S3 file system. Keys are SecretStr: a resolved config dumped into a
manifest shows them as '**********'.
"""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from rsdpo.files import TMP_SUFFIX, atomic_path, clear_temp_files

GLOB_CHARS = "*?["


class StorageConfig(BaseModel):
    """How to reach an S3-compatible object store (the `storage:` section of a run config). Every
    field left unset falls back to the standard AWS variable named in its description."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = Field(
        None, description="S3 endpoint URL with scheme, e.g. http://10.0.0.5:9000 for MinIO or rclone "
        "(default: AWS_ENDPOINT_URL, else AWS S3 itself)")
    region: str | None = Field(None, description="S3 region (default: AWS_REGION / AWS_DEFAULT_REGION, else "
                                                 "the bucket's own region on AWS)")
    access_key_id: SecretStr | None = Field(
        None, description="access key id (default: AWS_ACCESS_KEY_ID, else the SDK's profile or instance "
        "role); prefer the variable: a config file is easier to leak")
    secret_access_key: SecretStr | None = Field(None, description="secret key, given with access_key_id "
                                                                  "(default: AWS_SECRET_ACCESS_KEY)")

    @model_validator(mode="after")
    def _both_keys(self) -> StorageConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("storage.access_key_id and storage.secret_access_key go together: give both or "
                             "neither (then the AWS variables or the SDK's default chain are used)")
        return self


_config = StorageConfig()
_filesystems: dict[tuple[str, str], pafs.FileSystem] = {}


def configure(config: StorageConfig | None) -> None:
    """Use `config` for every object-store file system opened from now on in this process (entry
    points call it with the run config's `storage:` section; Ray workers with the one they are sent)."""
    global _config
    config = config or StorageConfig()
    if config != _config:
        _config = config
        _filesystems.clear()


def is_remote(location: str | Path) -> bool:
    """True for a URI of a store other than the local file system (s3://, gs://, hdfs://, ...)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def _local(location: str | Path) -> Path:
    return Path(str(location).removeprefix("file://")).expanduser()


def join(base: str | Path, *parts: str) -> str:
    """`base/part/...` for a local path or a URI (pathlib would fold `s3://` into `s3:/`)."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(_local(base), *parts))


def basename(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def parent(location: str | Path) -> str:
    if is_remote(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return str(_local(location).parent)


def relative(location: str | Path, start: str | Path) -> str:
    """`location` relative to the folder `start` (a manifest's paths stay valid when the run folder is
    copied or synced elsewhere); as given when the two are on different stores."""
    if not is_remote(location) and not is_remote(start):
        return os.path.relpath(_local(location).resolve(), _local(start).resolve())
    a, b = urlsplit(str(location)), urlsplit(str(start))
    if (a.scheme, a.netloc) != (b.scheme, b.netloc):
        return str(location)
    return posixpath.relpath(a.path or "/", b.path or "/")


def _s3(bucket: str) -> pafs.S3FileSystem:
    c = _config
    endpoint = c.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    # allow_delayed_open: an object smaller than one upload part goes up as one PutObject at close,
    # not as a multipart upload opened before the first byte is written.
    # Timeouts in seconds: the SDK's default cuts a request off after 3 s without a byte, which a
    # busy store (or a shard upload on a slow link) exceeds; a batch job would rather wait.
    kwargs: dict = {"allow_delayed_open": True, "connect_timeout": 10.0, "request_timeout": 60.0}
    if endpoint:
        url = urlsplit(endpoint)
        kwargs |= {"endpoint_override": url.netloc + url.path.rstrip("/"), "scheme": url.scheme or "https"}
    region = c.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None and not endpoint:
        region = pafs.resolve_s3_region(bucket)
    if region:
        kwargs["region"] = region
    if c.access_key_id is not None:
        kwargs |= {"access_key": c.access_key_id.get_secret_value(),
                   "secret_key": c.secret_access_key.get_secret_value()}
    return pafs.S3FileSystem(**kwargs)


def filesystem(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a local path or a URI; pyarrow's own file systems first,
    else fsspec's (schemes pyarrow does not know: memory://, az:// via adlfs, ...)."""
    if not is_remote(location):
        return pafs.LocalFileSystem(), str(_local(location).resolve())
    url = urlsplit(str(location))
    key = (url.scheme, url.netloc)
    fs = _filesystems.get(key)
    if fs is None:
        if url.scheme in ("s3", "s3a"):
            fs = _s3(url.netloc)
        else:
            try:
                fs = pafs.FileSystem.from_uri(str(location))[0]
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                import fsspec

                fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(url.scheme)))
        _filesystems[key] = fs
    path = (url.netloc + url.path).rstrip("/")
    if isinstance(fs, pafs.PyFileSystem):
        path = str(location)  # fsspec file systems take the whole URI
    return fs, path


def _info(location: str | Path) -> pafs.FileInfo:
    fs, path = filesystem(location)
    return fs.get_file_info(path)


def exists(location: str | Path) -> bool:
    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str | Path) -> bool:
    return _info(location).type == pafs.FileType.File


def is_dir(location: str | Path) -> bool:
    """A folder, or on an object store a prefix that holds at least one object."""
    return _info(location).type == pafs.FileType.Directory


def list_files(location: str | Path, suffixes: tuple[str, ...] = (), *, recursive: bool = False) -> list[str]:
    """Files under a folder or prefix, sorted, as locations of the same kind (URI or path).

    Names starting with `_` or `.` are skipped, as pyarrow's and datasets' folder readers skip them,
    and so are writers' temp files. `suffixes` keeps only files with one of those endings. A
    missing folder or prefix lists as empty."""
    fs, path = filesystem(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except NotADirectoryError:
        return []
    base = str(location).rstrip("/")
    out = []
    for info in infos:
        name = info.base_name
        if info.type != pafs.FileType.File or name.startswith(("_", ".")) or name.endswith(TMP_SUFFIX):
            continue
        if suffixes and not name.endswith(suffixes):
            continue
        rel = info.path[len(path):].lstrip("/") if info.path.startswith(path) else name
        out.append(join(base, rel))
    return sorted(out)


def glob(pattern: str) -> list[str]:
    """Files matching a shell-style pattern (`s3://b/prompts/*.jsonl`, `data/**/part-*.parquet`);
    `*` also crosses `/`, as object keys have no folders."""
    cut = min(i for i in (pattern.find(c) for c in GLOB_CHARS) if i >= 0)
    base = pattern[:cut].rsplit("/", 1)[0] if "/" in pattern[:cut] else "."
    return [f for f in list_files(base, recursive=True) if fnmatch.fnmatchcase(f, pattern)
            or fnmatch.fnmatchcase(f, join(base, pattern[len(base):].lstrip("/")))]


def read_bytes(location: str | Path) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode("utf-8")


@contextmanager
def open_input(location: str | Path) -> Iterator[BinaryIO]:
    """A buffered binary stream over a file or object (iterating it yields lines), read as it goes."""
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as raw, io.BufferedReader(raw) as f:
        yield f


@contextmanager
def atomic_write(location: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary stream; what was written to it becomes `location` when the block ends
    without error, by the backend's commit rule (module docstring). On an error nothing changes."""
    if not is_remote(location):
        target = _local(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            yield f
        return
    # The whole object is built in memory first: the upload starts only once it is complete.
    buf = io.BytesIO()
    yield buf
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as out:
        out.write(buf.getbuffer())


def write_bytes(location: str | Path, data: bytes) -> str:
    with atomic_write(location) as f:
        f.write(data)
    return str(location)


def write_text(location: str | Path, text: str) -> str:
    return write_bytes(location, text.encode("utf-8"))


def write_figure(location: str | Path, fig, dpi: int = 100) -> str:
    """A matplotlib figure as PNG (rendered in memory, then committed like any other file)."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=dpi)
    return write_bytes(location, png.getvalue())


def delete_tree(location: str | Path) -> None:
    """Remove a folder, or every object under a prefix; a missing one is not an error."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    try:
        fs.delete_dir(path)
    except OSError:
        # After deleting the objects pyarrow writes a folder-marker object ("run/") for the parent;
        # some S3-compatible servers refuse that (rclone serve s3 does). The objects are what count.
        left = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        if not is_remote(location) or any(i.type == pafs.FileType.File for i in left):
            raise


def clear_temps(location: str | Path) -> None:
    """Clear temp files that killed writers left in a folder (object stores have none to clear)."""
    if not is_remote(location):
        clear_temp_files(_local(location))
