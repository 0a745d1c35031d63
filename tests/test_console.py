"""`rsdpo`: dispatch to the stages' entry points, and `rsdpo submit`'s command line and up-front check."""

import argparse
import json
import sys

from cluster.session import WORKER_ENV
from cluster.submit import main as submit_main
from cluster.submit import submit_argv
from rsdpo.console import main


def test_unknown_command_names_the_choices(capsys):
    assert main(["pairs"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'pairs'" in err and "pair, sweep, validate" in err


def test_a_subcommand_runs_its_entry_point(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 1            # pairing validate: an empty folder
    assert "no .parquet shards" in capsys.readouterr().err


def test_submit_runs_cluster_run_through_ray_job_submit():
    args = argparse.Namespace(address="http://127.0.0.1:8265", working_dir=".", submission_id="job-1",
                              no_wait=True, config="cluster/configs/cpu-tiny.yaml", overrides=["generation.k=4"])
    argv = submit_argv(args)
    assert argv[:3] == [sys.executable, "-m", "ray.scripts.scripts"]
    sep = argv.index("--")
    assert argv[3:sep - 1] == ["job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", ".",
                                 "--submission-id", "job-1", "--no-wait", "--runtime-env-json"]
    assert json.loads(argv[sep - 1]) == {"env_vars": WORKER_ENV}
    assert argv[sep + 1:] == ["python", "-m", "cluster.run", "--config", "cluster/configs/cpu-tiny.yaml",
                              "generation.k=4"]


def test_submit_refuses_a_bad_config_before_sending_anything(capsys):
    # An unreachable address: had the check let it through, `ray job submit` would fail differently.
    assert submit_main(["--address", "http://127.0.0.1:9", "generation.k=1"]) == 2
    assert "generation.k = 1" in capsys.readouterr().err
