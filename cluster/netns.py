"""A real multi-node Ray cluster on one machine: every node is a `ray start` in a network namespace
of its own, with an address of its own on a private /24 that exists only inside these namespaces
(a bridge in one more namespace joins them). Ray cannot build a multi-node cluster on loopback, and
no traffic goes to the machine's own addresses. What the multi-node tests run on; to try the job on
several nodes by hand (root, iproute2):

    python -m cluster.netns                      # head + 3 workers; prints how to submit; Ctrl-C tears down
    ip netns exec rsdpo-XXXX-head .venv/bin/ray job submit --address http://10.A.B.1:8265 --working-dir . \
        -- python -m cluster.run --config cluster/configs/cpu-tiny.yaml \
           resources.sampler_resources.sampler_node=1 resources.scorer_resources.scorer_node=1

The default layout gives each worker logical GPUs (`ray start --num-gpus`: Ray schedules on declared
resources; the engines find no CUDA and run on CPU) and a custom resource naming its pool:
`sampler_node` on two of them (the second is where a lost sampler node's actor can go), `scorer_node`
on the third. All nodes share this machine's file system (the venv, Ray's token in ~/.ray, outputs).

Every process a node runs descends from its `ray start --block`, a child of this process: stopping
or killing a node signals exactly that tree, by pid. Names carry a per-session id, so a crashed
earlier session never blocks a new one; `down` removes the namespaces even when a node failed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent   # the venv's interpreter, unresolved (resolving drops the venv)
RAY = VENV_BIN / "ray"
GCS_PORT, DASHBOARD_PORT = 6379, 8265    # each namespace has its own ports: Ray's defaults never clash
# Ray 2.60 turns token authentication on for `ray start` (token in ~/.ray/auth_token, shared by every
# node on this machine); the jobs CLI and drivers only send it when told to.
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # no 30 s drain wait at teardown


@dataclass(frozen=True)
class NodeSpec:
    name: str
    num_cpus: int
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)


# cluster/configs/multi-node.yaml's nodes have 8 GPUs each; a node pool is a custom resource whose
# amount caps how many of that stage's actors the node takes.
DEFAULT_LAYOUT = (
    NodeSpec("head", num_cpus=1),  # the job's driver and commit tasks; no GPUs, no pool
    NodeSpec("sampler", num_cpus=2, num_gpus=8, resources={"sampler_node": 1}),
    NodeSpec("scorer", num_cpus=2, num_gpus=8, resources={"scorer_node": 1}),
    NodeSpec("spare", num_cpus=2, num_gpus=8, resources={"sampler_node": 1}),
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Node:
    def __init__(self, spec: NodeSpec, netns: str, address: str, temp_dir: Path):
        self.spec, self.netns, self.address, self.temp_dir = spec, netns, address, temp_dir
        self.proc: subprocess.Popen | None = None
        self.log_path = temp_dir / "ray-start.log"
        self.family: dict[int, psutil.Process] = {}  # pid -> process: its tree, as far as seen

    def track(self) -> None:
        """Remember the node's descendants: a process orphaned later is still this node's to stop."""
        if self.proc is None:
            return
        try:
            root = psutil.Process(self.proc.pid)
            self.family.setdefault(root.pid, root)
            for p in root.children(recursive=True):
                self.family.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def signal_all(self, sig: signal.Signals) -> None:
        self.track()
        for p in self.family.values():
            try:
                p.send_signal(sig)  # psutil refuses a pid since reused by another process
            except psutil.NoSuchProcess:
                pass


class NetnsCluster:
    """Create with a layout, then `up()`; `down()` always (it is safe after a failed `up`)."""

    def __init__(self, layout: tuple[NodeSpec, ...] = DEFAULT_LAYOUT, hosts: tuple[str, ...] = (),
                 base_dir: Path | None = None):
        """`hosts`: more namespaces on the cluster's network that run no Ray node (an object store
        every node reaches at one address); `host_address(name)`, `exec_argv(name)`."""
        assert layout[0].name == "head"
        self.id = secrets.token_hex(3)                   # names: rsdpo-<id>-<node>
        a, b = secrets.randbelow(250) + 1, secrets.randbelow(250) + 1
        self.subnet = f"10.{a}.{b}"                      # a /24 only these namespaces see
        # Short path: Ray's unix sockets live under the temp dir (108-byte socket path limit).
        self.base = Path(tempfile.mkdtemp(prefix=f"rn-{self.id}-", dir=base_dir or "/tmp"))
        self.bridge_ns = f"rsdpo-{self.id}-br"
        self.nodes = {spec.name: Node(spec, f"rsdpo-{self.id}-{spec.name}", f"{self.subnet}.{i + 1}",
                                      self.base / spec.name) for i, spec in enumerate(layout)}
        self.hosts = {name: (f"rsdpo-{self.id}-{name}", f"{self.subnet}.{len(layout) + i + 1}")
                      for i, name in enumerate(hosts)}
        self.node_env: dict[str, str] = {}
        self.made_netns: list[str] = []
        self.head = self.nodes["head"]
        self.gcs = f"{self.head.address}:{GCS_PORT}"
        self.dashboard = f"http://{self.head.address}:{DASHBOARD_PORT}"

    # -- network ------------------------------------------------------------------------------
    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.made_netns.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def network(self) -> None:
        self._add_netns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        members = [(n.netns, n.address) for n in self.nodes.values()] + list(self.hosts.values())
        for i, (netns, address) in enumerate(members):
            self._add_netns(netns)
            # Both ends are created inside their namespaces: nothing appears in the machine's own.
            port = f"p{i}"
            _ip("link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", port, "netns", self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
            _ip("-n", self.bridge_ns, "link", "set", port, "up")
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")

    def exec_argv(self, name: str = "head") -> list[str]:
        """Prefix that runs a command inside a node's or host's namespace (on the cluster's network)."""
        netns = self.nodes[name].netns if name in self.nodes else self.hosts[name][0]
        return ["ip", "netns", "exec", netns]

    def host_address(self, name: str) -> str:
        return self.hosts[name][1]

    def env(self) -> dict[str, str]:
        """The environment of every node (hence of every worker and job driver) and Ray CLI call."""
        return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | RAY_ENV | self.node_env

    # -- nodes --------------------------------------------------------------------------------
    def _start(self, node: Node) -> None:
        s = node.spec
        node.temp_dir.mkdir(parents=True)
        argv = [str(RAY), "start", "--block", "--node-ip-address", node.address,
                "--num-cpus", str(s.num_cpus), "--num-gpus", str(s.num_gpus),
                "--resources", json.dumps(s.resources), "--temp-dir", str(node.temp_dir), "--disable-usage-stats"]
        if node is self.head:
            argv += ["--head", "--port", str(GCS_PORT), "--dashboard-host", node.address,
                     "--dashboard-port", str(DASHBOARD_PORT), "--include-dashboard", "true"]
        else:
            argv += ["--address", self.gcs]
        log = open(node.log_path, "w")
        try:
            node.proc = subprocess.Popen([*self.exec_argv(s.name), *argv], stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env(), cwd=node.temp_dir, start_new_session=True)
        finally:
            log.close()  # the child holds its own copy

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """The `ray` CLI, run on the head's network (the dashboard listens only there)."""
        return subprocess.run([*self.exec_argv(), str(RAY), *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env())

    def ray_argv(self, *args: str) -> list[str]:
        return [*self.exec_argv(), str(RAY), *args]

    def alive_nodes(self) -> dict[str, str]:
        """node ip -> node id of every ALIVE node, from Ray's state API."""
        res = self.ray("list", "nodes", "--format", "json", "--address", self.dashboard, "--limit", "100")
        if res.returncode != 0:
            return {}
        return {n["node_ip"]: n["node_id"] for n in json.loads(res.stdout) if n["state"] == "ALIVE"}

    def node_ids(self) -> dict[str, str]:
        """node name -> Ray node id (of the nodes alive now)."""
        by_ip = self.alive_nodes()
        return {name: by_ip[n.address] for name, n in self.nodes.items() if n.address in by_ip}

    def _wait(self, what: str, ready, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for node in self.nodes.values():
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(f"`ray start` of node {node.spec.name} exited {node.proc.returncode}:\n"
                                       f"{node.log_path.read_text()[-3000:]}")
            if ready():
                return
            time.sleep(1)
        raise TimeoutError(f"{what} not ready after {timeout:.0f}s; logs under {self.base}")

    def up(self, timeout: float = 180, env: dict[str, str] | None = None) -> NetnsCluster:
        """Network, then the Ray nodes; `env` goes to every node, as a real cluster's nodes get their
        object-store endpoint and credentials from the environment (never in a job's runtime env,
        which `ray job list` shows)."""
        if not self.made_netns:
            self.network()
        self.node_env = dict(env or {})
        self._start(self.head)
        self._wait("Ray head", lambda: self.ray("job", "list", "--address", self.dashboard).returncode == 0, timeout)
        for node in self.nodes.values():
            if node is not self.head:
                self._start(node)
        self._wait(f"{len(self.nodes)} Ray nodes", lambda: len(self.alive_nodes()) == len(self.nodes), timeout)
        for node in self.nodes.values():
            node.track()
        return self

    def track(self) -> None:
        for node in self.nodes.values():
            node.track()

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL a node's whole tree at once (raylet, agents, workers, engine processes), as a
        lost machine would vanish. Returns the pids signalled."""
        node = self.nodes[name]
        node.signal_all(signal.SIGKILL)
        pids = sorted(node.family)
        psutil.wait_procs(list(node.family.values()), timeout=10)
        return pids

    def down(self) -> None:
        """Stop every node (workers first, then the head), then remove the namespaces."""
        for node in [*(n for n in self.nodes.values() if n is not self.head), self.head]:
            node.track()
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)  # ray start --block stops the processes it started
                try:
                    node.proc.wait(60)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
        for node in self.nodes.values():
            _, alive = psutil.wait_procs(list(node.family.values()), timeout=20)
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(alive, timeout=10)
        for name in reversed(self.made_netns):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made_netns.clear()

    def remove_files(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep-logs", action="store_true", help="keep the nodes' Ray logs after teardown")
    args = ap.parse_args(argv)
    cluster = NetnsCluster()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        cluster.up()
        ids = cluster.node_ids()
        for name, node in cluster.nodes.items():
            s = node.spec
            print(f"{name:8s} {node.address:15s} netns {node.netns}  cpus={s.num_cpus} gpus={s.num_gpus} "
                  f"resources={s.resources}  node_id={ids.get(name)}")
        print(f"\nSubmit a job (from the repo root):\n  {' '.join(cluster.exec_argv())} {RAY} job submit "
              f"--address {cluster.dashboard} --working-dir . -- python -m cluster.run --config CONFIG ...\n"
              f"Logs: {cluster.base}. Ctrl-C stops the cluster and removes its namespaces.", flush=True)
        while not stop:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.down()
        if not args.keep_logs:
            cluster.remove_files()
    return 0


if __name__ == "__main__":
    sys.exit(main())
