"""Integration tier: the job as a cluster runs it. A real Ray head on this machine (loopback only),
the pipeline submitted with `ray job submit --working-dir <repo>` on a tiny random Llama, followed
with `ray job status` / `ray job logs` like an operator would, then its shards and manifest.

The head runs as `ray start --head --block`, a child of this test: tearing it down stops exactly
the Ray processes it started (and any of their descendants still alive), by pid. `ray stop`
would kill every Ray process on the machine, including other people's local clusters.
"""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from ray_jobs import PROGRESS, RAY, ROOT, logs, submit, wait

pytestmark = pytest.mark.integration
N_PROMPTS, SHARD_SIZE, K = 8, 4, 4


def _free_ports(n: int) -> list[int]:
    """n distinct free ports. Each socket stays bound until all are chosen: ports asked for one at a
    time can repeat (CI once got the same port for two of the head's components, and Ray refused)."""
    socks = []
    try:
        for _ in range(n):
            socks.append(socket.socket())
            socks[-1].bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# Ray 2.60 turns token authentication on for `ray start` (token in ~/.ray/auth_token), but the
# jobs CLI only sends the token when told to: name the mode for head and clients alike.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes `--node-ip-address 127.0.0.1` stick (by default Ray
# swaps a loopback address for the machine's routable IP and binds its gRPC servers to every
# interface); with it every server of the head listens on loopback only.
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class Head:
    """A single-node Ray cluster owned by this test: `ray start --head --block` as a child process."""

    def __init__(self, temp_dir: Path):
        self.gcs_port, self.dash_port, agent_http, agent_grpc, metrics, runtime_env = _free_ports(6)
        self.temp_dir = temp_dir
        self.dashboard = f"http://127.0.0.1:{self.dash_port}"
        env = self.env() | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # no 30 s drain wait at teardown
        self.log = open(temp_dir / "head.log", "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dash_port),
             # Every port this node opens is a free one: the dashboard agent's default (52365) is
             # fixed, and another Ray node on the machine (a local ray.init) would hold it, leaving
             # this head without a job agent ("No available agent to submit job").
             "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
             "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
             "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "true",
             "--temp-dir", str(temp_dir), "--disable-usage-stats"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=temp_dir, start_new_session=True)
        self.family: dict[int, object] = {}  # pid -> psutil.Process: everything the head spawned, seen so far

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"ray start exited: {(self.temp_dir / 'head.log').read_text()[-3000:]}"
            # The Jobs API answers once the dashboard is up; the CLI sends Ray's auth token
            # (~/.ray/auth_token: token authentication is on by default).
            if self.ray("job", "list", "--address", self.dashboard).returncode == 0:
                return
            time.sleep(1)
        raise TimeoutError(f"Ray head not ready after {timeout}s: {(self.temp_dir / 'head.log').read_text()[-3000:]}")

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | RAY_ENV

    def ray_argv(self, *args: str) -> list[str]:
        return [str(RAY), *args]

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.ray_argv(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=self.env())

    def track(self) -> None:
        """Remember the head's descendants (workers, job drivers, vLLM engine processes): a process
        orphaned later is no longer in the tree, but is still ours to stop."""
        import psutil

        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.family.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def stop(self) -> None:
        import psutil

        self.track()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # ray start --block kills the processes it started
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _, alive = psutil.wait_procs(list(self.family.values()), timeout=20)
        for p in alive:  # psutil refuses to signal a pid reused by another process
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def head():
    # Short path: Ray's unix sockets live under the temp dir (108-byte socket path limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rsdpo-ray-", dir="/tmp"))
    h = Head(temp_dir)
    try:
        h.wait_ready()
        yield h
    finally:
        h.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def job_config(tiny_policy, tmp_path_factory):
    d = tmp_path_factory.mktemp("submit")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} times {i}?", "prompt_id": f"s{i:02d}"})
                               + "\n" for i in range(N_PROMPTS)))
    cfg = {
        "output_dir": str(d / "out"),  # absolute and outside the working dir, as a submitted job requires
        "seed": 1, "shard_size": SHARD_SIZE,
        "prompts": {"source": str(prompts)},
        "generation": {"model": str(tiny_policy), "k": K, "max_tokens": 12, "max_model_len": 512},
        "rewarding": {"max_length": 64},
        "pairing": {"tau": 0.02, "eta": 0.85},
    }
    path = d / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def _working_dir_copy(head: Head) -> Path:
    """The unpacked working_dir Ray made on this node from the uploaded package."""
    found = sorted((head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files").glob("_ray_pkg_*"))
    found = [p for p in found if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def submitted(head, job_config):
    path, cfg = job_config
    t0 = time.time()
    sid, submit_out = submit(head, path)
    status, arrivals, ended = wait(head, sid, timeout=300)
    text = logs(head, sid)
    assert status == "SUCCEEDED", text[-6000:]
    print(f"\n[test_submit] job {sid}: {status} in {ended - t0:.0f}s", flush=True)
    return {"sid": sid, "submit_out": submit_out, "arrivals": arrivals, "ended": ended, "logs": text,
            "out": Path(cfg["output_dir"])}


def test_progress_lines_stream_while_the_job_runs(submitted):
    n_shards = -(-N_PROMPTS // SHARD_SIZE)
    streamed = [line for _, line in submitted["arrivals"]]
    assert len(streamed) == n_shards, streamed
    # The first shard's line reached the live log stream before the job was seen to end.
    assert submitted["arrivals"][0][0] < submitted["ended"], (submitted["arrivals"], submitted["ended"])
    # The stored log (what `ray job logs` shows afterwards) holds one line per shard, with progress.
    shards = PROGRESS.findall(submitted["logs"])
    assert sorted(shards) == [f"shard-{i:05d}" for i in range(n_shards)]
    assert f"{N_PROMPTS}/{N_PROMPTS} prompts" in submitted["logs"]
    assert "[rsdpo] done:" in submitted["logs"]


def test_shards_and_manifest_of_the_submitted_job(submitted, head):
    out = submitted["out"]
    scored = sorted((out / "scored" / "data").glob("*.parquet"))
    pairs = sorted((out / "pairs" / "data").glob("*.parquet"))
    assert [p.name for p in scored] == [p.name for p in pairs] == ["shard-00000.parquet", "shard-00001.parquet"]
    ids = [i for p in scored for i in pq.read_table(p, columns=["prompt_id"]).column(0).to_pylist()]
    assert sorted(ids) == [f"s{i:02d}" for i in range(N_PROMPTS)]
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert c["prompts_in"] == c["rows_out"] == N_PROMPTS and c["row_errors"] == 0 and c["balanced"]
    assert c["pairs"] == sum(pq.read_metadata(p).num_rows for p in pairs)
    # Joined the submitted-to cluster (RAY_ADDRESS from the job supervisor), not a local one.
    assert m["ray_address"] == f"127.0.0.1:{head.gcs_port}"
    assert m["config"]["output_dir"] == str(out)
    t = m["throughput"]
    assert t["prompts_per_s"] > 0 and t["sampler_busy_output_tokens_per_s"] > 0 and t["scorer_busy_responses_per_s"] > 0
    print(f"\n[test_submit] throughput: {json.dumps(t)}", flush=True)


def test_working_dir_upload_is_small(submitted, head):
    """Ray honours .gitignore: the 4 GB .venv and outputs/ stay behind; code and configs go."""
    copy = _working_dir_copy(head)
    files = [p for p in copy.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in files:
            z.write(p, p.relative_to(copy))
    top = sorted(p.name for p in copy.iterdir())
    print(f"\n[test_submit] working_dir upload: {len(files)} files, {size / 2**20:.2f} MiB unpacked, "
          f"{len(buf.getvalue()) / 2**20:.2f} MiB zipped; top level: {top}", flush=True)
    assert ".venv" not in top and "outputs" not in top
    assert (copy / "cluster" / "run.py").is_file() and (copy / "cluster" / "configs" / "default.yaml").is_file()
    assert size < 10 * 2**20
    assert "Uploading package gcs://_ray_pkg_" in submitted["submit_out"]


def test_relative_output_dir_is_refused_with_a_clear_message(head, job_config, submitted):
    path, _ = job_config
    sid, _ = submit(head, path, "output_dir=outputs/submitted")
    status, arrivals, _ = wait(head, sid, timeout=120)
    text = logs(head, sid)
    assert status == "FAILED", text[-3000:]
    assert "output_dir='outputs/submitted' lies inside the job's working dir" in text, text[-3000:]
    assert "absolute path on shared storage" in text
    assert not arrivals
    assert not (_working_dir_copy(head) / "outputs").exists()


def test_head_listens_on_loopback_only(head, submitted):
    import psutil

    head.track()
    pids = {head.proc.pid, *head.family}
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids}
    assert listening and all(ip in {"127.0.0.1", "::1", "::ffff:127.0.0.1"} for ip, _ in listening), listening
