"""One driver per output folder: a lease lock at OUT/.rsdpo-driver.lock.

    with OutputLock.at(out).acquire(break_lock=args.break_lock):   # cluster/run.py
        ...                                                         # the job; the lease is renewed

The lock is a small JSON record (holder's host, pid, process start, start time, last heartbeat,
a random token). A second driver finds it and is refused (`OutputLocked`), with the holder and
what to do. A holder that stopped without releasing (killed, its node lost) leaves the record;
it is broken automatically when it is provably stale:
- same host, and the holder process is gone (pid not running, or running with another start
  time: a reused pid);
- the last heartbeat is older than LEASE_S: a live holder rewrites the record every
  HEARTBEAT_S. This part assumes the hosts' clocks agree to well under LEASE_S (NTP).
`--break-lock` breaks any lock (the operator knows the holder is gone). A break re-reads the
record and deletes it only if it is still the one judged stale.

The record lives behind a small interface (LockStore: create-if-absent, read, replace, delete),
so a shared file system and an object store each give it the strongest primitive they have:

- PosixStore (local disks and shared POSIX file systems): create is open(O_CREAT | O_EXCL),
  which the server makes atomic on NFSv3+/v4 (EFS, Filestore), Lustre, CephFS and local file
  systems: of two drivers exactly one creates the file. flock() would release itself when the
  holder dies, but it is not a shared-storage primitive everywhere: Lustre mounted without
  `-o flock` refuses it or keeps it node-local (`localflock`), gcsfuse and object stores have
  none, and an flock holds no record to name the holder in the refusal. Replace writes a temp
  file and renames it over the record (atomic; NFS close-to-open consistency lets the next open
  on another client see it, and LEASE_S is longer than NFS attribute caching, acregmax 60 s).
- ObjectStore (s3://, gs:// through pyarrow.fs) has no atomic create-if-absent through pyarrow, and the
  S3-compatible server the tests use (rclone serve s3) ignores a conditional PUT's
  `If-None-Match: *`: two PUTs of the same key both succeed, the last one wins. So create there
  is check, write, wait, read back: exactly one of two racing drivers reads its own token back,
  unless one of them stalls between its check and its write for longer than the wait. A holder
  also reads the record back at every heartbeat, so a lock taken over by another driver is
  noticed within HEARTBEAT_S and this driver stops (on_lost).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from rsdpo.files import atomic_path

LOCK_NAME = ".rsdpo-driver.lock"  # dot-prefixed: directory readers never take it for data
LEASE_S = 120.0                   # a record not renewed for this long is stale
HEARTBEAT_S = 15.0                # how often a holder renews it
ATTEMPTS = 5                      # looks at the record before giving up on a lock that keeps changing


class OutputLocked(RuntimeError):
    """Another live driver holds the output folder; the message names it and what to do."""


class LockStore(Protocol):
    """Where a lock record lives: create-if-absent, read, replace, delete (one key or file)."""

    where: str

    def create(self, data: bytes) -> bool: ...           # False when a record exists already
    def read(self) -> bytes | None: ...                   # None when there is none
    def replace(self, data: bytes) -> None: ...
    def delete(self) -> None: ...


class PosixStore:
    """The record as a file on a local or shared POSIX file system (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.where = str(self.path)

    def create(self, data: bytes) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def replace(self, data: bytes) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(data)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


class ObjectStore:
    """The record as one object under a pyarrow.fs file system (s3://, gs://): create is check,
    write, wait SETTLE_S, read back (see the module docstring for what that guarantees)."""

    SETTLE_S = 2.0

    def __init__(self, fs, path: str, where: str):
        self.fs, self.path, self.where = fs, path, where

    def create(self, data: bytes) -> bool:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.path).type != pafs.FileType.NotFound:
            return False
        try:
            self.replace(data)
        except OSError:
            return False  # a concurrent upload of the same key failed ours (rclone answers HTTP 500)
        # A driver that checked at the same moment wrote too; the store keeps the last write, so
        # after a pause both read the same record back and only its writer goes on.
        time.sleep(self.SETTLE_S)
        return self.read() == data

    def read(self) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def replace(self, data: bytes) -> None:
        with self.fs.open_output_stream(self.path) as f:  # one PUT: the object appears whole
            f.write(data)

    def delete(self) -> None:
        import pyarrow.fs as pafs

        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            # After the delete pyarrow writes a folder-marker object for the parent, which some
            # S3-compatible servers refuse (rclone serve s3 does); the record being gone is what counts.
            if self.fs.get_file_info(self.path).type != pafs.FileType.NotFound:
                raise


@dataclass
class Holder:
    token: str
    host: str
    pid: int
    pid_started: float | None  # the process's start time (tells a reused pid apart)
    started_at: float
    heartbeat_at: float
    command: str

    def describe(self, now: float) -> str:
        return (f"host {self.host}, pid {self.pid}, started {_utc(self.started_at)}, last heartbeat "
                f"{now - self.heartbeat_at:.0f}s ago, command: {self.command}")


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class Unreadable(ValueError):
    """The record exists but does not parse: being created this instant, or not ours."""


def _parse(data: bytes | None) -> Holder | None:
    if data is None:
        return None
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError) as e:
        raise Unreadable(f"{data[:80]!r}") from e


class OutputLock:
    """Hold `store`'s lock for one driver: acquire (or refuse), renew it on a thread, release."""

    def __init__(self, store: LockStore, *, lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S,
                 on_lost: Callable[[str], None] | None = None):
        self.store, self.lease_s, self.heartbeat_s = store, lease_s, heartbeat_s
        self.on_lost = on_lost
        now = time.time()
        self.me = Holder(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                         pid_started=_process_start(os.getpid()), started_at=now, heartbeat_at=now,
                         # key=value overrides left out: one may be a storage secret
                         command=" ".join(a for a in sys.argv if "=" not in a)[:300])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def at(cls, out: str | Path, **kw) -> OutputLock:
        """The lock of output folder `out`: a local or shared file system path, or an object-store URI."""
        from rsdpo import storage

        where = storage.join(out, LOCK_NAME)
        if storage.is_remote(out):
            fs, path = storage.filesystem(where)
            return cls(ObjectStore(fs, path, where), **kw)
        return cls(PosixStore(where), **kw)

    def _record(self) -> bytes:
        return json.dumps(asdict(self.me)).encode()

    def stale_reason(self, other: Holder, now: float) -> str | None:
        """Why `other`'s record can be broken without asking, or None while it may be live."""
        if other.host == self.me.host and other.pid > 0:
            started = _process_start(other.pid)
            if started is None:
                return f"its process {other.pid} is not running on this host"
            if other.pid_started is not None and abs(started - other.pid_started) > 1.0:
                return f"pid {other.pid} now belongs to another process"
        if now - other.heartbeat_at > self.lease_s:
            return f"no heartbeat for {now - other.heartbeat_at:.0f}s (lease {self.lease_s:.0f}s)"
        return None

    def acquire(self, break_lock: bool = False) -> OutputLock:
        """Take the lock or raise OutputLocked; a stale record (or any, with break_lock) is broken."""
        for attempt in range(ATTEMPTS):  # a record released, broken or still being written: look again
            self.me.heartbeat_at = time.time()
            if self.store.create(self._record()):
                self._start_heartbeat()
                return self
            try:
                other = _parse(self.store.read())
            except Unreadable as e:
                if break_lock:
                    self.store.delete()
                elif attempt == ATTEMPTS - 1:
                    raise OutputLocked(
                        f"{self.store.where} holds no lock record this version can read ({e}). If no driver is "
                        f"running on this output folder, delete that file or re-run with --break-lock.") from None
                time.sleep(0.5)  # a record is written just after its exclusive create
                continue
            if other is None:
                time.sleep(random.uniform(0, 0.5))  # no record although create failed: a race; spread the retries
                continue
            now = time.time()
            reason = "--break-lock given" if break_lock else self.stale_reason(other, now)
            if reason is None:
                raise OutputLocked(
                    f"{self.store.where}: another driver is running on this output folder ({other.describe(now)}). "
                    f"Two drivers would write and clear the same shards. Wait for it to finish, stop it, or use "
                    f"another output_dir. If it is gone (its node lost), its lease expires {self.lease_s:.0f}s "
                    f"after its last heartbeat and the next run takes over; or re-run with --break-lock.")
            print(f"[rsdpo] breaking the lock of a stopped driver ({other.describe(now)}): {reason}",
                  file=sys.stderr, flush=True)
            try:
                if _parse(self.store.read()) == other:  # still the record we judged, not a newcomer's
                    self.store.delete()
            except Unreadable:
                pass
        raise OutputLocked(f"{self.store.where}: the lock changed hands {ATTEMPTS} times while this driver "
                           f"tried to take it; another driver is starting on this output folder")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="rsdpo-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = _parse(self.store.read())
            except Unreadable:
                current = None
            if current is None or current.token != self.me.token:
                who = current.describe(time.time()) if current else "nobody"
                message = (f"{self.store.where}: this driver lost its lock (now held by {who}); stopping so "
                           f"that two drivers do not write the same shards")
                print(f"[rsdpo] {message}", file=sys.stderr, flush=True)
                if self.on_lost is not None:
                    self.on_lost(message)
                return
            self.me.heartbeat_at = time.time()
            self.store.replace(self._record())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s)
        try:
            current = _parse(self.store.read())
        except Unreadable:
            return
        if current is not None and current.token == self.me.token:
            self.store.delete()

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
