"""The project as a package: pyproject's ranges hold the pinned sets, and a non-editable install
into a fresh venv runs `rsdpo` from another folder, with package data (DeepSpeed configs) found.

The install test builds the wheel from a copy of the source tree (so no build/ lands in the repo),
installs it with --no-deps into a fresh venv, and runs `rsdpo --help` there with nothing else
installed. For the pure-Python subcommands it then gives that venv exactly the dependency closure
of pyarrow, pydantic, PyYAML, numpy, huggingface_hub and matplotlib, taken from this venv (a .pth
file naming a folder of links, no network): ray, vllm and torch stay absent, so a subcommand that
imported them would fail.
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What `rsdpo pair` / `validate` and the stage configs import (matplotlib: the pairs card's plot).
PURE_DEPS = ["pyarrow", "pydantic", "PyYAML", "numpy", "huggingface_hub", "matplotlib"]


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            spec = next(iter(req.specifier), None)
            assert spec is not None and spec.operator == "==", f"requirements/{name}: {line!r} is not pinned with =="
            pins[canonicalize_name(req.name)] = spec.version
    return pins


@pytest.mark.parametrize("pinned, extras", [("cpu.txt", ["cpu", "dev"]), ("gpu.txt", ["gpu"])])
def test_pinned_sets_satisfy_the_package_ranges(pinned, extras):
    pins = _pins(pinned)
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    reqs += [Requirement(r) for extra in extras for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements/{pinned} has no pin for {req.name} (pyproject.toml requires it)"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements/{pinned}: {req.name}=={pins[name]} is outside pyproject.toml's {req.specifier}"


def test_gpu_image_pins_vllm():
    assert "vllm" in _pins("gpu.txt")
    dockerfile = (ROOT / "cluster" / "manifests" / "Dockerfile").read_text()
    assert "COPY requirements/gpu.txt" in dockerfile


def _closure(names: list[str]) -> set[str]:
    """Installed distributions `names` need (their requirements, recursively, no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        name = canonicalize_name(dist.metadata["Name"])
        if name in seen:
            continue
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _link_distributions(names: set[str], into: Path) -> None:
    """Link each distribution's top-level files and its .dist-info into `into`."""
    into.mkdir()
    for name in names:
        dist = importlib.metadata.distribution(name)
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if (base / top).exists() and not (into / top).exists() and not top.endswith(".pth"):
                (into / top).symlink_to(base / top)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding only the project's wheel (non-editable); returns its bin folder."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "runs", "__pycache__", "*.egg-info", "build", ".pytest_cache", ".ruff_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(src)], check=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("rsdpo_engine-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True)
    return venv / "bin"


def _run(bin_dir: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=cwd,
                          env=env | {"HF_HUB_OFFLINE": "1"}, timeout=120)


def test_installed_rsdpo_runs_from_another_folder(installed, tmp_path):
    out = _run(installed, "rsdpo", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for command in ("run", "generate", "reward", "pair", "sweep", "validate", "inspect", "train", "eval", "submit"):
        assert f"\n  {command} " in out.stdout
    where = _run(installed, "python", "-c", "import rsdpo.console, json; print(json.dumps(rsdpo.console.__file__))",
                 cwd=tmp_path)
    assert Path(json.loads(where.stdout)).is_relative_to(installed.parent), where.stdout  # not the checkout

    # Pure-Python subcommands, with only their own dependencies beside the wheel.
    site = next((installed.parent / "lib").glob("python3*/site-packages"))
    _link_distributions(_closure(PURE_DEPS), tmp_path / "deps")
    (site / "rsdpo-test-deps.pth").write_text(f"{tmp_path / 'deps'}\n")
    for heavy in ("ray", "vllm", "torch"):
        assert _run(installed, "python", "-c", f"import {heavy}", cwd=tmp_path).returncode != 0, heavy

    run = tmp_path / "run"
    (run / "scored").mkdir(parents=True)
    _write_scored(run / "scored" / "shard-00000.parquet")
    pair = _run(installed, "rsdpo", "pair", "--input", str(run / "scored"), "--output", str(run / "pairs"),
                "tau=0.1", cwd=tmp_path)
    assert pair.returncode == 0, pair.stderr
    assert "-> 4 pairs" in pair.stdout, pair.stdout
    check = _run(installed, "rsdpo", "validate", str(run / "pairs"), cwd=tmp_path)
    assert check.returncode == 0 and check.stdout.startswith("ok:"), check.stdout + check.stderr
    # inspect reads a run folder; its manifest here is the pipeline's keys, written by hand
    (run / "manifest.json").write_text(json.dumps({"stage": "pipeline", "config": {"pairing": {"tau": 0.1}},
                                                   "counts": {}, "warnings": []}))
    report = _run(installed, "rsdpo", "inspect", str(run), "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["acceptance"]["accepted_by_rule"] == 4

    # deepspeed=zero2 resolves to the JSON shipped as package data inside the installed copy.
    ds = _run(installed, "python", "-c", "from training.config import DeepSpeed, TrainingConfig; "
              "p = TrainingConfig(deepspeed='zero2').deepspeed.config_file(); print(p); "
              "import json; json.load(open(p))", cwd=tmp_path)
    assert ds.returncode == 0, ds.stderr
    assert Path(ds.stdout.strip()).is_relative_to(site), ds.stdout


def _write_scored(path: Path) -> None:
    """Two prompts of k = 3 raw rewards, built here from the schema module (one accepted pair each at tau=0.1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from generation import schema as g
    from rewarding import schema as rs

    rows = []
    for pid, rewards in (("p0", [0.0, 0.5, 0.48]), ("p1", [1.0, 1.0, 0.0])):
        texts = [f"{pid} reply {j}" for j in range(3)]
        rows.append({g.PROMPT_ID: pid, g.PROMPT: [{"role": "user", "content": f"question {pid}"}],
                     g.REFERENCE: None, g.SOURCE: "test", g.RESPONSES: texts, g.FINISH_REASONS: ["stop"] * 3,
                     g.NUM_TOKENS: [3, 3, 3], g.PROMPT_TOKENS: 3, g.SEED: 0, g.ERROR: None, rs.REWARDS: rewards,
                     rs.REWARD_MEAN: sum(rewards) / 3, rs.REWARD_STD: 0.0, rs.REWARD_MIN: min(rewards),
                     rs.REWARD_MAX: max(rewards)})
    pq.write_table(pa.Table.from_pylist(rows, schema=rs.SCORED_SCHEMA), path)
