"""Run every benchmark once, one after another, and write bench/results/latest.json and latest.md.

    python bench/run_all.py [--only pairing,scorer,e2e,dpo,scale,sampling,engine_start]

Each bench is its own script (runnable alone, printing a JSON record then Markdown); this runs it
as a subprocess with the sizes below (on the 2-core machine about 25 minutes, 14 of them the
scale bench's 100k-prompt job and 1M-prompt driver phases), parses the first JSON object it prints, and collects one table: bench, metric,
value, target, met?. Scripts that follow bench/report.py carry their own `metrics` rows; for the
others (pairing_bench.py, dpo_bench.py) the known headline numbers are picked from the record.
A bench that is missing, fails or times out gets a row saying so; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import markdown, metric  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# name -> (script, argv after the interpreter, timeout s)
BENCHES = {
    "pairing": ("bench/pairing_bench.py", ["bench/pairing_bench.py"], 180),
    "scorer": ("bench/scorer_bench.py", ["bench/scorer_bench.py", "--prompts", "12", "--repeats", "2"], 300),
    # the RESERVED_CPU=0 variant (one more engine start) runs in e2e_bench.py's own default run
    "e2e": ("bench/e2e_bench.py", ["bench/e2e_bench.py", "--no-reserved-variant"], 480),
    "dpo": ("bench/dpo_bench.py", ["-m", "bench.dpo_bench"], 300),
    # the driver phases at 10k/100k/1M and the real job at 1k/10k/100k: about 14 minutes of the suite
    "scale": ("bench/scale_bench.py", ["bench/scale_bench.py"], 1500),
    "sampling": ("bench/sampling_bench.py", ["bench/sampling_bench.py"], 300),
    "engine_start": ("bench/engine_start_bench.py", ["bench/engine_start_bench.py", "--pairs", "1"], 300),
}


def first_json(stdout: str) -> dict | None:
    """The first JSON object a bench printed (a one-line record or an indented one)."""
    dec = json.JSONDecoder()
    for i, line in enumerate(stdout.splitlines(keepends=True)):
        if line.startswith("{"):
            rest = "".join(stdout.splitlines(keepends=True)[i:])
            try:
                return dec.raw_decode(rest)[0]
            except json.JSONDecodeError:
                continue
    return None


def rows_for(name: str, rec: dict) -> list[dict]:
    if "metrics" in rec:
        return rec["metrics"]
    def pick(*keys):  # the script's key names have changed between versions: first present wins
        return next(((k, rec[k]) for k in keys if k in rec), (keys[0], None))

    match name:
        case "pairing":
            key, rate = pick("batched_pairs_per_s", "batched_pairs_per_cpu_s")
            rows = [metric(name, f"rs_dpo_batch candidate pairs/s ({key})", rate, ">= 1e6")]
            rows += [metric(name, f"batched / naive loop ({k})", rec[k]) for k in ("speedup", "speedup_cpu",
                                                                                   "speedup_wall") if k in rec]
            key, rate = pick("make_pairs_pairs_per_s", "make_pairs_pairs_per_cpu_s")
            if rate is not None:
                rows.append(metric(name, f"make_pairs end to end candidate pairs/s ({key})", rate))
            return rows
    # Unknown layout (dpo_bench.py): its top-level ratios, no target known here.
    return [metric(name, k, v) for k, v in rec.items() if isinstance(v, int | float) and ("ratio" in k or "speedup" in k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(BENCHES), help="comma list of benches to run")
    args = ap.parse_args()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started, t_all = datetime.now(UTC), time.perf_counter()
    benches, rows = {}, []
    for name in args.only.split(","):
        script, argv, timeout = BENCHES[name]
        if not (ROOT / script).exists():
            benches[name] = {"status": f"skipped: {script} does not exist"}
            rows.append(metric(name, "(not run)", f"{script} missing"))
            continue
        print(f"[bench] {name}: {' '.join(argv)} (timeout {timeout}s)", flush=True)
        t0 = time.perf_counter()
        try:
            res = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=timeout)
            out, err, rc = res.stdout, res.stderr, res.returncode
        except subprocess.TimeoutExpired as e:
            out, err, rc = (e.stdout or b"").decode(errors="replace"), (e.stderr or b"").decode(errors="replace"), None
        wall = round(time.perf_counter() - t0, 1)
        rec = first_json(out) if rc == 0 else None
        if rec is None:
            status = f"timed out after {timeout}s" if rc is None else f"failed (exit {rc})" if rc else "no JSON record"
            benches[name] = {"status": status, "wall_s": wall, "stderr_tail": err[-3000:], "stdout_tail": out[-2000:]}
            rows.append(metric(name, "(failed)", status))
            print(f"[bench] {name}: {status}\n{err[-1500:]}", flush=True)
            continue
        benches[name] = {"status": "ok", "wall_s": wall, "command": f"python {' '.join(argv)}", "record": rec}
        rows += rows_for(name, rec)
        print(f"[bench] {name}: ok in {wall}s", flush=True)
    total = round(time.perf_counter() - t_all, 1)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(
        {"started": started.isoformat(timespec="seconds"), "wall_s": total, "machine": machine,
         "metrics": rows, "benches": benches}, indent=2, default=str) + "\n")
    md = [f"# Benchmarks ({started:%Y-%m-%d %H:%M} UTC, {machine['cpus']} CPUs, {total:.0f}s in all)", "",
          "Written by `python bench/run_all.py`; each bench also runs alone (`python bench/<name>_bench.py`).", "",
          markdown(rows), "", "| bench | status | wall s | command |", "|---|---|---:|---|"]
    md += [f"| {n} | {b['status']} | {b.get('wall_s', '')} | `{b.get('command', '')}` |" for n, b in benches.items()]
    (RESULTS / "latest.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\n[bench] wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.md'}")


if __name__ == "__main__":
    main()
