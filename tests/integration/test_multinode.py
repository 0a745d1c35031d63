"""Integration tier: the data job on a real multi-node Ray cluster on this machine (cluster/netns.py:
a head and three workers, each a `ray start` in a network namespace of its own, with logical GPUs and
a custom resource naming its pool), submitted with `ray job submit` like an operator would.

    flock /tmp/rsdpo-heavy.lock env PYTHONPATH=$PWD .venv/bin/python -m pytest -q -s tests/integration/test_multinode.py

- both GPU example configs run through the GPU request path (scaled down by overrides: tiny models,
  one replica per stage, few prompts);
- the samplers and scorers of a pinned run ran on the nodes their custom resources name (manifest
  placement, checked against Ray's state API), writing to a real S3 server (rclone) that runs in a
  namespace of its own on the cluster's network;
- SIGKILL of the node hosting the sampler after the first committed shard: the job still ends with
  every prompt exactly once and no partial file. What happened and the time lost are printed.

Needs root (ip netns). One cluster for the module; the namespaces go away even when a test fails.
"""

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray_jobs import PY, ROOT, logs, submit, wait

from cluster.netns import NetnsCluster
from cluster.plan import shard_footer
from rsdpo.files import TMP_SUFFIX

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode,
                       reason="needs iproute2 and root (ip netns)"),
]
CONFIGS = ROOT / "cluster" / "configs"
SHARD_SIZE = 3


@pytest.fixture(scope="module")
def netns_cluster(tmp_path_factory):
    """The cluster, and a real S3 server (rclone) in a namespace of its own on the cluster's network:
    every node reaches it at one address and gets its endpoint and keys from its environment."""
    from s3server import start_s3_server

    cluster = NetnsCluster(hosts=("s3",))
    server = None
    try:
        t0 = time.time()
        cluster.network()
        server = start_s3_server(tmp_path_factory.mktemp("s3") / "data", host=cluster.host_address("s3"), port=9000,
                                 prefix=cluster.exec_argv("s3"))
        cluster.up(env=server.env())
        cluster.s3 = server
        cluster.names = {node_id: name for name, node_id in cluster.node_ids().items()}
        print(f"\n[test_multinode] {len(cluster.nodes)} nodes up in {time.time() - t0:.0f}s: "
              f"{ {n.spec.name: n.address for n in cluster.nodes.values()} }, S3 at {server.endpoint}", flush=True)
        yield cluster
    finally:
        cluster.down()
        if server is not None:
            server.stop()
        cluster.remove_files()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"rsdpo-{cluster.id}-" not in listed, listed


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?", "prompt_id": f"m{i:02d}"})
                            + "\n" for i in range(n)))
    return path


def scaled(tiny_policy, tiny_reward_model, prompts: Path, out: str | Path, *extra: str) -> list[str]:
    """Overrides that run a GPU example config here: tiny models, one replica per stage with the
    config's GPU counts kept, CPUs to fit 2-CPU nodes. On CPU the engine's KV cache is a share of host
    memory, so the config's gpu_memory_utilization (0.9) is lowered."""
    return [f"output_dir={out}", f"prompts.source={prompts}", f"shard_size={SHARD_SIZE}",
            f"generation.model={tiny_policy}", "generation.k=2", "generation.max_tokens=8",
            "generation.max_model_len=512", "generation.vllm.gpu_memory_utilization=0.1",
            f"rewarding.model={tiny_reward_model}", "rewarding.max_length=128",
            "resources.sampler_replicas=1", "resources.sampler_num_cpus=1",
            "resources.scorer_replicas=1", "resources.scorer_num_cpus=1", "resources.writer_num_cpus=0.25", *extra]


def run(cluster, config: Path, overrides: list[str], timeout: float = 240, on_progress=None) -> dict:
    t0 = time.time()
    sid, _ = submit(cluster, config, *overrides)
    state, arrivals, ended = wait(cluster, sid, timeout, on_progress=on_progress)
    return {"sid": sid, "state": state, "arrivals": arrivals, "wall": ended - t0, "t0": t0, "logs": logs(cluster, sid)}


def exactly_once(out: Path, n: int) -> list[str]:
    """Every prompt in exactly one committed scored shard, every shard whole (its rows and its
    footer's digest of their ids and contents = its plan entry), no temp or partial file and no
    shard outside the plan. `out` is the run folder on disk (for a run on S3, the object store's own
    folder of that prefix). Returns the shard names."""
    plan = json.loads((out / "plan.json").read_text())["shards"]   # name -> [prompt count, digest]
    ids = []
    for name, (count, digest) in plan.items():
        path = out / "scored" / "data" / f"{name}.parquet"
        got = pq.read_table(path, columns=["prompt_id"]).column(0).to_pylist()
        footer = shard_footer(str(path))
        assert len(got) == count and footer["digest"] == digest and footer["prompts"] == count, (name, footer, count)
        ids += got
    assert sorted(ids) == [f"m{i:02d}" for i in range(n)]
    for sub in ("scored", "pairs"):
        names = {p.name for p in (out / sub).rglob("*") if p.is_file()}
        stray = {n for n in names if n.endswith(TMP_SUFFIX) or n.endswith(".parquet") and n[:-8] not in plan}
        assert not stray, (sub, stray)
    return sorted(plan)


def _on_s3(cluster, name: str) -> tuple[str, Path]:
    """(output_dir URI in the cluster's bucket, the objects' folder on the server's disk)."""
    uri = f"{cluster.s3.make_bucket('runs')}/{name}"
    return uri, cluster.s3.data_dir / "runs" / name


def test_gpu_8x_node_config_on_logical_gpus(netns_cluster, tiny_policy, tiny_reward_model, tmp_path):
    """The one-node 8-GPU example asks each sampler and scorer for a GPU: Ray Data needs a batch size
    for that, and a batch must still be one shard (8 prompts: shards of 3, 3 and 2)."""
    out = tmp_path / "out"
    res = run(netns_cluster, CONFIGS / "gpu-8x-node.yaml",
              scaled(tiny_policy, tiny_reward_model, _prompts(tmp_path / "p.jsonl", 8), out))
    assert res["state"] == "SUCCEEDED", res["logs"][-6000:]
    assert exactly_once(out, 8) == ["shard-00000", "shard-00001", "shard-00002"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["resources"]["sampler_num_gpus"] == 1 and m["config"]["resources"]["scorer_num_gpus"] == 1
    names = netns_cluster.names
    # The head declares no GPUs: an actor there would not have asked for one.
    placed = {(names[p["sampler_node"]], names[p["scorer_node"]]) for p in m["placement"]}
    assert all("head" not in pair for pair in placed), placed
    print(f"\n[test_multinode] gpu-8x-node.yaml: {res['wall']:.0f}s, (sampler, scorer) nodes {placed}", flush=True)


# 24 prompts: 7 shards of 3 and a tail of three 1-prompt shards, sampled one shard at a time, so
# the sampler still has shards to go when the first one is committed (the lost-node test needs that).
MULTI_NODE_PROMPTS = 24


def _multi_node_overrides(tiny_policy, tiny_reward_model, tmp_path: Path, out: str) -> list[str]:
    # TP ranks are engine processes on the actor's GPUs; on CPU one engine process stands for them.
    # The config's own pools pin the stages (resources.sampler_resources / scorer_resources).
    return scaled(tiny_policy, tiny_reward_model, _prompts(tmp_path / "p.jsonl", MULTI_NODE_PROMPTS), out,
                  "generation.vllm.tensor_parallel_size=1", "generation.max_tokens=32",
                  "resources.sampler_shards_in_flight=1")


# One long-lived poller of Ray's state API on the head's network: a `ray list actors` per poll would
# cost a Python start-up (about a CPU second) each time, on the job's two cores.
SAMPLER_NODES_POLLER = """
import json, sys, time
from ray.util.state import list_actors
while True:
    try:
        actors = list_actors(address=sys.argv[1], filters=[("state", "=", "ALIVE")], limit=1000)
        print(json.dumps(sorted({a.node_id for a in actors if "SamplerActor" in a.class_name})), flush=True)
    except Exception as e:  # the dashboard is briefly unreachable while a node is lost: try again
        print(json.dumps({"error": repr(e)}), flush=True)
    time.sleep(0.5)
"""


class Watch:
    """While a job runs: the nodes Ray's state API shows live sampler actors on (polled), and the
    moment the first committed shard is on disk (every node writes to this machine's file system),
    when `on_first_shard(watch)` is called."""

    def __init__(self, cluster, out: Path, on_first_shard=None):
        self.cluster, self.out, self.on_first_shard = cluster, out, on_first_shard
        self.sampler_nodes: set[str] = set()
        self.first_shard_at: float | None = None
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._actors, daemon=True),
                        threading.Thread(target=self._shards, daemon=True)]

    def _actors(self) -> None:
        for line in self.poller.stdout:
            got = json.loads(line)
            if isinstance(got, list):
                self.sampler_nodes.update(got)

    def _shards(self) -> None:
        while not self.done.is_set() and self.first_shard_at is None:
            if (self.out / "scored" / "data").is_dir() and any((self.out / "scored" / "data").glob("*.parquet")):
                self.first_shard_at = time.time()
                if self.on_first_shard is not None:
                    self.on_first_shard(self)
            self.done.wait(0.05)

    def __enter__(self):
        self.poller = subprocess.Popen(
            [*self.cluster.exec_argv(), str(PY), "-c", SAMPLER_NODES_POLLER, self.cluster.dashboard],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.cluster.env())
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.poller.kill()
        self.poller.wait()
        for t in self.threads:
            t.join(30)


@pytest.fixture(scope="module")
def pinned_run(netns_cluster, tiny_policy, tiny_reward_model, tmp_path_factory):
    """The multi-node example config with samplers and scorers pinned to their pools, no fault: the
    placement check and the baseline for the lost-node run."""
    tmp = tmp_path_factory.mktemp("pinned")
    uri, out = _on_s3(netns_cluster, "pinned")
    with Watch(netns_cluster, out) as watch:
        res = run(netns_cluster, CONFIGS / "multi-node.yaml", _multi_node_overrides(tiny_policy, tiny_reward_model, tmp, uri))
    assert res["state"] == "SUCCEEDED", res["logs"][-6000:]
    return res | {"out": out, "state_api_sampler_nodes": watch.sampler_nodes}


def test_multi_node_config_places_stages_by_custom_resources(netns_cluster, pinned_run):
    out, names = pinned_run["out"], netns_cluster.names
    exactly_once(out, MULTI_NODE_PROMPTS)
    m = json.loads((out / "manifest.json").read_text())
    r = m["config"]["resources"]
    assert r["sampler_num_gpus"] == 4 and r["sampler_resources"] == {"sampler_node": 1} and \
        r["scorer_resources"] == {"scorer_node": 1}
    sampler_nodes = {names[p["sampler_node"]] for p in m["placement"]}
    scorer_nodes = {names[p["scorer_node"]] for p in m["placement"]}
    assert len(m["placement"]) == len(json.loads((out / "plan.json").read_text())["shards"])
    # sampler_node is on the sampler and spare nodes, scorer_node only on the scorer node
    assert sampler_nodes <= {"sampler", "spare"} and len(sampler_nodes) == 1, sampler_nodes
    assert scorer_nodes == {"scorer"}, scorer_nodes
    # Ray's own view while the job ran agrees with the manifest
    assert {names[n] for n in pinned_run["state_api_sampler_nodes"]} == sampler_nodes
    print(f"\n[test_multinode] multi-node.yaml pinned: {pinned_run['wall']:.0f}s; samplers on {sampler_nodes}, "
          f"scorers on {scorer_nodes} ({len(m['placement'])} shards)", flush=True)


def test_lost_sampler_node(netns_cluster, pinned_run, tiny_policy, tiny_reward_model, tmp_path):
    """SIGKILL every process of the node hosting the sampler once the first shard is committed."""
    uri, out = _on_s3(netns_cluster, "lost-node")
    overrides = _multi_node_overrides(tiny_policy, tiny_reward_model, tmp_path, uri)
    cluster, names = netns_cluster, netns_cluster.names
    lost: dict = {}

    def kill_sampler_node(watch: Watch) -> None:
        deadline = time.time() + 10
        while not watch.sampler_nodes and time.time() < deadline:
            time.sleep(0.1)
        (node_id,) = watch.sampler_nodes
        lost.update(node=names[node_id], node_id=node_id, t=time.time(),
                    shards_before=len(list((out / "scored" / "data").glob("*.parquet"))))
        lost["pids"] = cluster.kill_node(names[node_id])

    with Watch(cluster, out, on_first_shard=kill_sampler_node):
        first = run(cluster, CONFIGS / "multi-node.yaml", overrides, timeout=300)
    assert lost, first["logs"][-4000:]
    attempts = [first]
    if first["state"] == "SUCCEEDED":
        outcome = "the same job went on (sampler actor restarted)"
    else:
        # The job may give up; it must say which node it lost, and the same submission resumes it.
        text = first["logs"]
        assert f"lost Ray node {cluster.nodes[lost['node']].address} (node id {lost['node_id']})" in text, text[-6000:]
        attempts.append(run(cluster, CONFIGS / "multi-node.yaml", overrides, timeout=300))
        assert attempts[-1]["state"] == "SUCCEEDED", attempts[-1]["logs"][-6000:]
        outcome = "the job failed naming the lost node; the same submission resumed it"
    shards = exactly_once(out, MULTI_NODE_PROMPTS)
    m = json.loads((out / "manifest.json").read_text())
    after = sorted({names.get(p["sampler_node"], p["sampler_node"]) for p in m["placement"]} - {lost["node"]})
    total = attempts[-1]["t0"] + attempts[-1]["wall"] - first["t0"]
    print(f"\n[test_multinode] lost node: SIGKILL of {lost['node']} ({len(lost['pids'])} processes) with "
          f"{lost['shards_before']} of {len(shards)} shards committed; {outcome}; sampled after the loss on {after}; "
          f"{len(attempts)} submission(s), {total:.0f}s in all vs {pinned_run['wall']:.0f}s without the loss: "
          f"{total - pinned_run['wall']:.0f}s lost", flush=True)
