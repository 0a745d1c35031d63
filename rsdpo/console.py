"""The `rsdpo` command: one entry over the stages, each subcommand the stage's own `python -m` entry point.

    rsdpo --help
    rsdpo run --config cluster/configs/default.yaml [key=value ...]     # = python -m cluster.run
    rsdpo pair --input OUT/scored --output OUT/pairs eta=0.9            # = python -m pairing
    rsdpo inspect OUT [--json]
    rsdpo COMMAND --help                                                # its options and config keys

A subcommand imports its module only once chosen: `rsdpo --help`, `rsdpo pair`, `rsdpo validate`
and `rsdpo inspect` run where ray and vllm are not installed. The module names below are strings
on purpose: this file sits in rsdpo/ (the bottom of the import order) but dispatches to every
stage above it, which an import statement here would invert.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import NamedTuple

from rsdpo.logs import ENV, LEVELS


class Command(NamedTuple):
    module: str                 # its `python -m` module, whose main(argv) -> int runs it
    prefix: tuple[str, ...]     # argv the module needs before the user's (a sub-command of it)
    summary: str


COMMANDS: dict[str, Command] = {
    "run": Command("cluster.run", (), "the whole chain (data job, DPO, evaluation) or the data job alone, on Ray"),
    "generate": Command("generation.__main__", (), "generation stage alone (vLLM, no Ray): prompts -> samples"),
    "reward": Command("rewarding.__main__", (), "rewarding stage alone (no Ray): samples -> scored"),
    "pair": Command("pairing.__main__", ("run",), "pairing stage: scored shards -> pairs shards, manifest, card"),
    "sweep": Command("pairing.__main__", ("sweep",), "re-pair cached scored shards over an eta x tau grid"),
    "validate": Command("pairing.__main__", ("validate",), "check a scored or pairs folder's schema and invariants"),
    "inspect": Command("cluster.inspect_run", (), "summarise a finished run folder (counts, errors, pairs, "
                       "throughput, warnings)"),
    "train": Command("cluster.train", (), "DPO on pairs with TRL on Ray Train workers (DeepSpeed ZeRO)"),
    "eval": Command("training.eval", (), "trained policy vs SFT on held-out prompts, one reward model"),
    "submit": Command("cluster.submit", (), "submit `rsdpo run` to a running Ray cluster (ray job submit)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rsdpo [--log-level LEVEL] COMMAND [options] [key=value ...]", "",
             "RS-DPO data engine: vLLM sampling, reward scoring, Algorithm 1 pairing, DPO training.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
    lines += ["", "`rsdpo COMMAND --help` lists the command's options and every config key it takes "
              "(type, default, meaning).",
              f"--log-level {{{','.join(LEVELS)}}} (default ${ENV}, else info) applies to every command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--log-level"]:
        if len(argv) < 2 or argv[1] not in LEVELS:
            print(f"rsdpo: --log-level takes one of {', '.join(LEVELS)}", file=sys.stderr)
            return 2
        os.environ[ENV] = argv[1]           # every entry point's --log-level defaults to it
        argv = argv[2:]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rsdpo: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    command = COMMANDS[name]
    sys.argv[0] = f"rsdpo {name}"      # argparse names the program after it in usage lines
    return importlib.import_module(command.module).main([*command.prefix, *rest])


if __name__ == "__main__":
    sys.exit(main())
