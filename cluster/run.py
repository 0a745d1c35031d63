"""Entry point of the RS-DPO data job: sample -> score -> pair -> shards, on Ray.

Run directly (starts a local Ray cluster):
    python -m cluster.run --config cluster/configs/default.yaml [key=value ...] [--fresh]
Submitted to an existing cluster (joins it via RAY_ADDRESS, which `ray job submit` sets):
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m cluster.run --config cluster/configs/default.yaml

One driver at a time per output_dir (rsdpo/lock.py): a second one is refused (exit 2) naming
the holder; `--break-lock` takes over a lock whose holder is known to be gone. SIGTERM
(pre-emption, `kill`, `ray job stop`) stops the job as Ctrl-C does: its tasks end, temp files
are removed, committed shards stay, and the driver exits with status 143; a re-run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from cluster.config import RunConfig
from rsdpo import storage
from rsdpo.cli import ConfigError, config_help, load_config
from rsdpo.lock import OutputLock, OutputLocked
from rsdpo.logs import add_log_level, setup_logging

EXIT_TERMINATED = 128 + signal.SIGTERM  # the shell's status for "ended by SIGTERM"


class Terminated(SystemExit):
    """SIGTERM reached the driver: unwinds the job like Ctrl-C (run_pipeline cleans up on any
    BaseException), and exits 143 if nothing catches it."""


def _on_sigterm(signum, frame) -> None:
    # One stop at a time: a second SIGTERM must not cut the clean-up of the first short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(EXIT_TERMINATED)


def submitted_job() -> bool:
    """True inside a `ray job submit` driver (the job supervisor sets this variable)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def check_output_location(cfg: RunConfig) -> str | None:
    """A submitted job runs in a copy of the uploaded working dir that Ray deletes later, and
    whatever lies there is uploaded with every submission: outputs must live outside it."""
    if not submitted_job() or storage.is_remote(cfg.output_dir):
        return None   # an object-store prefix is never inside the working dir
    out = Path(cfg.output_dir).expanduser()
    cwd = Path.cwd().resolve()
    if not out.is_absolute() or out.resolve() == cwd or cwd in out.resolve().parents:
        return (f"output_dir={cfg.output_dir!r} lies inside the job's working dir ({cwd}), which Ray "
                f"uploads with each submission and deletes after it. Give an object-store prefix or an "
                f"absolute path on shared storage, e.g. output_dir=s3://BUCKET/rsdpo/run1 or /mnt/shared/rsdpo/run1")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, epilog=config_help({"": RunConfig}),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="run config YAML (cluster/configs/*.yaml)")
    ap.add_argument("--fresh", action="store_true", help="discard shards of an earlier, different run in output_dir")
    ap.add_argument("--break-lock", action="store_true",
                    help="take over output_dir's driver lock from a driver known to be gone (see rsdpo/lock.py)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nesting (generation.k=4)")
    add_log_level(ap)
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    try:
        cfg = load_config(RunConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if (problem := check_output_location(cfg)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from cluster.pipeline import ErrorRateExceeded, NodeLost, run_pipeline
    from cluster.plan import RunRefused
    from generation.prompts import PromptError

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)  # cluster.session.connect keeps it past ray.init
    storage.configure(cfg.storage)  # the lock of an object-store output_dir is an object there
    # A lost lock (another driver broke it) stops this one the way a pre-emption does.
    lock = OutputLock.at(cfg.out, on_lost=lambda _: os.kill(os.getpid(), signal.SIGTERM))
    try:
        lock.acquire(break_lock=args.break_lock)
    except OutputLocked as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if cfg.training is not None:
            from cluster.chain import run_chain

            chain = run_chain(cfg, fresh=args.fresh)
            last = chain["rounds"][-1]
            print(json.dumps(chain["rounds"], indent=2, default=str))
            if "evaluation" in last:
                print(f"[rsdpo] done: {len(chain['rounds'])} round(s). Evaluation report: "
                      f"{last['evaluation']['report']} (plot {last['evaluation']['plot']})")
            print(f"[rsdpo] chain manifest: {chain['manifest']}; final policy: {last['training']['output']}")
            return 0
        run = run_pipeline(cfg, fresh=args.fresh)
    except (RunRefused, ErrorRateExceeded, PromptError, FileNotFoundError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NodeLost as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Terminated:
        print(f"[rsdpo] stopped by SIGTERM: committed shards are kept in {cfg.out}, temp files removed; "
              f"re-run the same command to resume", file=sys.stderr, flush=True)
        return EXIT_TERMINATED
    finally:
        lock.release()
    c = run["counts"]
    print(json.dumps({"counts": c, "throughput": run["throughput"]}, indent=2))
    print(f"[rsdpo] done: {c['rows_out']} prompts scored ({c['row_errors']} row errors, {c['quarantined']} "
          f"quarantined), {c['pairs']} pairs from {c['prompts_with_pairs']} prompts -> {cfg.out}")
    return 0 if c["balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
