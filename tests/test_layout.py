"""Architecture rules that keep stages runnable without Ray."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["rsdpo", "generation", "rewarding", "pairing", "training"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_cluster_imports_ray():
    offenders = [str(p.relative_to(ROOT)) for stage in STAGES for p in (ROOT / stage).rglob("*.py")
                 if "ray" in _imports(p)]
    assert offenders == [], f"only cluster/ may import ray; found it in {offenders}"


def test_config_modules_import_nothing_heavy():
    heavy = {"torch", "vllm", "transformers", "ray", "trl", "deepspeed", "datasets", "numpy"}
    for path in ROOT.glob("*/config.py"):
        assert not (_imports(path) & heavy), f"{path} imports {_imports(path) & heavy}"


def test_every_config_file_parses_and_names_its_command():
    from cluster.config import RunConfig
    from rsdpo.cli import load_config

    files = sorted((ROOT / "cluster" / "configs").glob("*.yaml"))
    assert files
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("#"), f"{f} must start with a comment giving the command that runs it"
        data = yaml.safe_load(f.read_text())
        if {"prompts", "generation"} & set(data):
            load_config(RunConfig, f)


# The data flows rsdpo (the shared helpers) -> generation -> rewarding -> pairing -> training -> cluster -> bench; a module
# imports only from its own layer or those before it.
FLOW = ["rsdpo", "generation", "rewarding", "pairing", "training", "cluster", "bench"]
# Stage entry points validate a run config whole, so they read the composed run config (pure pydantic,
# no ray); nothing else may reach up the flow.
ENTRY_POINTS = {"generation/__main__.py", "rewarding/__main__.py", "pairing/__main__.py",
                "training/__main__.py", "training/eval.py"}


def test_imports_follow_the_data_flow():
    offenders = []
    for layer, pkg in enumerate(FLOW):
        for path in (ROOT / pkg).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            tree = ast.parse(path.read_text(), filename=rel)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules = [node.module]
                elif isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in FLOW and FLOW.index(top) > layer and \
                            not (rel in ENTRY_POINTS and module == "cluster.config"):
                        offenders.append(f"{rel}:{node.lineno} imports {module}")
    assert offenders == [], "imports against the data flow:\n" + "\n".join(offenders)
