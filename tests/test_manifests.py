"""Cluster manifests (cluster/manifests/) stay runnable: each one names `python -m cluster.run`
with a run config that exists and validates, and the cluster it describes can hold that config
(GPUs per node and in total, the shared volume every path in the config lives on, no hub)."""

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from cluster.config import RunConfig
from cluster.session import WORKER_ENV
from rsdpo.cli import load_config

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "cluster" / "manifests"
SHARED = "/mnt/shared"  # where every manifest mounts the shared volume
IMAGE_ROOT = "/opt/rsdpo-engine/"  # where the Dockerfile's `baked` target puts this repo
KUBERAY = ["rayjob.yaml", "rayjob-baked.yaml", "raycluster.yaml"]


def _yaml_files() -> list[Path]:
    return sorted(MANIFESTS.glob("*.yaml"))


def _commands(path: Path) -> list[str]:
    """Job commands a manifest gives: a RayJob's `spec.entrypoint`, else the `python -m cluster.run`
    command in its leading comment (joined across shell line continuations)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    found = [d["spec"]["entrypoint"] for d in docs if d.get("kind") == "RayJob"]
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    text = " ".join(header).replace("\\ ", " ")
    found += re.findall(r"python -m cluster\.run --config \S+", text)
    return found


def _config_of(command: str) -> RunConfig:
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "cluster.run"], command
    cfg_path = ROOT / argv[argv.index("--config") + 1].removeprefix(IMAGE_ROOT)
    assert cfg_path.is_file(), f"{command!r}: {cfg_path} does not exist"
    return load_config(RunConfig, cfg_path)


def _k8s_gpu_groups(doc: dict) -> tuple[dict, list[tuple[int, int, dict]]]:
    """(cluster spec, [(pods, GPUs per pod, custom resources per pod)]) of a RayJob or RayCluster."""
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    groups = []
    for g in spec["workerGroupSpecs"]:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        # KubeRay passes rayStartParams.resources to `ray start --resources` as a quoted JSON string
        custom = json.loads(json.loads(g["rayStartParams"]["resources"])) if "resources" in g["rayStartParams"] else {}
        groups.append((g["replicas"], int(limits.get("nvidia.com/gpu", 0)), custom))
    return spec, groups


def _check_fits(cfg: RunConfig, groups: list[tuple[int, int, dict]], where: str) -> None:
    """GPUs per node and in total; with node pools, every actor a place in its pool: samplers fill the
    nodes of their pool (those without the scorers' pool first), scorers the GPUs left."""
    r = cfg.resources
    per_node = max(gpus for _, gpus, _ in groups)
    total = sum(n * gpus for n, gpus, _ in groups)
    need = r.sampler_replicas * r.sampler_num_gpus + r.scorer_replicas * r.scorer_num_gpus
    assert r.sampler_num_gpus <= per_node, f"{where}: a sampler needs {r.sampler_num_gpus} GPUs on one node"
    assert need <= total, f"{where}: the config asks for {need} GPUs, the cluster has {total}"

    def fit(free_gpus: float, have: dict, want: dict, gpus: float) -> int:
        caps = [have.get(k, 0) // v for k, v in want.items()] + ([free_gpus // gpus] if gpus else [])
        return int(min(caps)) if caps else 10**6

    nodes = sorted((node for n, gpus, custom in groups for node in [(gpus, custom)] * n),
                   key=lambda node: any(k in node[1] for k in r.scorer_resources))
    samplers_left, scorers = r.sampler_replicas, 0
    for gpus, custom in nodes:
        n = min(samplers_left, fit(gpus, custom, r.sampler_resources, r.sampler_num_gpus))
        samplers_left -= n
        scorers += fit(gpus - n * r.sampler_num_gpus, custom, r.scorer_resources, r.scorer_num_gpus)
    assert samplers_left == 0, f"{where}: {samplers_left} samplers find no node with {r.sampler_resources} and GPUs"
    assert scorers >= r.scorer_replicas, f"{where}: room for {scorers} of {r.scorer_replicas} scorers"


def _check_paths_shared(cfg: RunConfig, where: str) -> None:
    """Run data on the shared volume or in an object store; models (local folders) on the volume."""
    for field, value in [("output_dir", cfg.output_dir), ("prompts.source", cfg.prompts.source)]:
        assert value.startswith((SHARED + "/", "s3://", "gs://")), \
            f"{where}: {field}={value} is neither on the shared volume {SHARED} nor in an object store"
    for field, value in [("generation.model", cfg.generation.model), ("rewarding.model", cfg.rewarding.model)]:
        assert value.startswith(SHARED + "/"), f"{where}: {field}={value} is not on the shared volume {SHARED}"


def test_every_manifest_names_an_existing_config():
    files = _yaml_files()
    assert {f.name for f in files} >= {"rayjob.yaml", "raycluster.yaml", "ray-up-aws.yaml"}
    for f in files:
        if f.name == "shared-pvc.yaml":
            continue
        commands = _commands(f)
        assert commands, f"{f.name}: no `python -m cluster.run --config ...` command"
        for c in commands:
            _config_of(c)


def _kuberay_doc(name: str) -> dict:
    return next(d for d in yaml.safe_load_all((MANIFESTS / name).read_text())
                if d and d.get("kind") in {"RayJob", "RayCluster"})


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_manifest_fits_its_config(name):
    path = MANIFESTS / name
    doc = _kuberay_doc(name)
    spec, groups = _k8s_gpu_groups(doc)
    for cmd in _commands(path):
        cfg = _config_of(cmd)
        _check_fits(cfg, groups, name)
        _check_paths_shared(cfg, name)
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        claims = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == "rsdpo-shared"}
        for c in pod["containers"]:
            assert any(m["mountPath"] == SHARED and m["name"] in claims for m in c["volumeMounts"]), name
            assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"], name
    if doc["kind"] == "RayJob":
        env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
        assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
        assert env["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == WORKER_ENV["RAY_TRAIN_ENABLE_PRINT_PATCH"]
        images = {c["image"] for pod in pods for c in pod["containers"]}
        if "working_dir" in env:
            # A remote zip of the repo (code + configs): the submitter pod has no local checkout.
            assert env["working_dir"].endswith(".zip")
        else:
            # Code baked into the image: nothing to fetch (no working_dir, py_modules or pip), the
            # config named where the `baked` target puts the repo, every pod on a baked image.
            assert set(env) == {"env_vars"}, env
            assert doc["spec"]["entrypoint"].split("--config ")[1].startswith(IMAGE_ROOT)
            assert all("baked" in image for image in images), images


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_manifests_use_token_auth_and_state_the_operator_version(name):
    doc = _kuberay_doc(name)
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert spec["authOptions"] == {"mode": "token"}
    major, minor, _ = (int(x) for x in spec["rayVersion"].split("."))
    assert (major, minor) >= (2, 52), "Ray token authentication needs Ray 2.52 or newer"
    header = (MANIFESTS / name).read_text().split("apiVersion:")[0]
    assert "KubeRay v1.5.1 or newer" in header   # the first release with authOptions
    # No token in the manifest: the operator generates it into a Secret.
    assert "RAY_AUTH_TOKEN" not in yaml.safe_dump(doc)


def test_ray_up_yaml_is_a_valid_cluster_config_that_fits_its_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = MANIFESTS / "ray-up-aws.yaml"
    raw = yaml.safe_load(path.read_text())
    validate_config(prepare_config(raw))  # Ray's own schema, as `ray up` checks it (offline)
    gpu_type = {"p5.48xlarge": 8, "p4d.24xlarge": 8, "p4de.24xlarge": 8}
    groups = [(t["min_workers"], gpu_type.get(t["node_config"]["InstanceType"], 0), t.get("resources", {}))
              for t in raw["available_node_types"].values() if t.get("max_workers", 0) > 0]
    assert f"-v /fsx:{SHARED}" in raw["docker"]["run_options"]
    assert "-e HF_HUB_OFFLINE=1" in raw["docker"]["run_options"]
    assert any("--dashboard-host=127.0.0.1" in c for c in raw["head_start_ray_commands"])
    for cmd in _commands(path):
        cfg = _config_of(cmd)
        _check_fits(cfg, groups, path.name)
        _check_paths_shared(cfg, path.name)


def test_dockerfile_installs_the_gpu_requirements_offline_by_default():
    text = (MANIFESTS / "Dockerfile").read_text()
    assert "COPY requirements/gpu.txt /tmp/requirements-gpu.txt" in text
    assert "pip install --no-cache-dir -r /tmp/requirements-gpu.txt" in text
    assert "HF_HUB_OFFLINE=1" in text
    assert (ROOT / "requirements" / "gpu.txt").is_file()


def test_dockerfile_baked_target_installs_the_package_where_manifests_look():
    text = (MANIFESTS / "Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0-py311-gpu AS runtime" in text and "FROM runtime AS baked" in text
    root = IMAGE_ROOT.rstrip("/")
    assert f"COPY --chown=ray:users . {root}" in text and f"pip install --no-cache-dir --no-deps {root}" in text
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "outputs"} <= ignored   # the context is the repo root: keep the venv out
