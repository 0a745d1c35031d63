"""Submit the RS-DPO job to a running Ray cluster (`ray job submit`), its config validated here first.

    rsdpo submit --address http://127.0.0.1:8265 --working-dir . --config cluster/configs/default.yaml [key=value ...]
    python -m cluster.submit --address URL [--working-dir DIR] [--submission-id ID] [--no-wait] --config F ...

The job runs `python -m cluster.run --config F [key=value ...]` on the cluster. With --working-dir,
Ray uploads DIR (a checkout: code and configs, minus .gitignore'd paths) and the job runs in it, as
`make submit` does; without it the job runs the package installed in the cluster's image
(cluster/manifests/Dockerfile, target `baked`), and F must be a path on the cluster. The config is
validated locally before anything is sent, so a typo fails here, not minutes later in the driver.
RAY_AUTH_MODE defaults to `token`: heads started by Ray 2.60's `ray start` require the token, and
the jobs CLI sends it only when told to.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

from cluster.config import RunConfig
from cluster.session import WORKER_ENV
from rsdpo.cli import ConfigError, config_help, load_config
from rsdpo.logs import add_log_level, setup_logging

ENTRYPOINT = ["python", "-m", "cluster.run"]


def submit_argv(args: argparse.Namespace) -> list[str]:
    """The `ray job submit` command line for the parsed arguments."""
    argv = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", args.address]
    if args.working_dir:
        argv += ["--working-dir", args.working_dir]
    if args.submission_id:
        argv += ["--submission-id", args.submission_id]
    if args.no_wait:
        argv.append("--no-wait")
    argv += ["--runtime-env-json", json.dumps({"env_vars": WORKER_ENV})]   # what local sessions give workers
    job = [*ENTRYPOINT, *(["--config", args.config] if args.config else []), *args.overrides]
    return [*argv, "--", *job]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, epilog=config_help({"": RunConfig}),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
                    help="the head's dashboard URL (default: $RAY_ADDRESS, else http://127.0.0.1:8265)")
    ap.add_argument("--working-dir", help="upload this folder as the job's working dir (a checkout)")
    ap.add_argument("--submission-id", help="job id to follow with `ray job status/logs` (default: Ray picks)")
    ap.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the log")
    ap.add_argument("--config", help="run config YAML, as the cluster sees the path")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nesting (generation.k=4)")
    add_log_level(ap)
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    # The file is validated when this machine can read it (in the working dir, or the same path);
    # a path that exists only on the cluster is validated by the job itself.
    local = os.path.join(args.working_dir or "", args.config) if args.config else None
    if local is not None and not os.path.exists(local):
        print(f"[rsdpo] {local} is not on this machine: the job reads --config on the cluster", flush=True)
        local = None
    try:
        load_config(RunConfig, local, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = submit_argv(args)
    print(f"[rsdpo] {shlex.join(command[3:])}", flush=True)
    env = os.environ | {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
