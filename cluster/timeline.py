"""A picture of one run: each shard's sample, score and commit spans, one lane per actor, drawn
from the summary rows the commit tasks return (cluster.actors.commit_shard). The job writes it as
OUT/timeline.png next to its manifest; idle engines, a slow scorer or a long tail show as gaps.

    python -m cluster.timeline OUT   # redraw OUT/timeline.png from OUT/manifest.json's spans (local or s3://)
"""

from __future__ import annotations

import json
import sys

from rsdpo import storage

TIMELINE = "timeline.png"
SPAN_KEYS = ("shard", "t_read", "t_sample_start", "t_sample", "t_score_start", "t_score", "commit_start",
             "committed_at", "sampler_id", "scorer_id", "writer_pid")


def spans(committed: list[dict]) -> list[dict]:
    """The per-shard timing fields of the commit summaries (what the manifest keeps to redraw)."""
    return [{k: row[k] for k in SPAN_KEYS} for row in committed]


def draw(rows: list[dict], t0: float, path: str, title: str) -> str:
    """Write the timeline of `rows` (spans()) with times relative to `t0` (the job's start)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a worker or CI machine has none
    import matplotlib.pyplot as plt

    lanes: dict[tuple[str, str], int] = {}
    def lane(kind: str, who) -> int:
        return lanes.setdefault((kind, str(who)), len(lanes))
    rows = sorted(rows, key=lambda r: r["t_sample_start"])  # stagger order: the order shards were sampled
    for row in rows:
        lane("sampler", row["sampler_id"])
    for row in rows:
        lane("scorer", row["scorer_id"])
    commits = lane("commit", "tasks")  # one lane: each commit is a short task, each in a process of its own
    colours = {"sampler": "tab:blue", "scorer": "tab:orange", "commit": "tab:green"}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.7 * len(lanes)))
    # a commit takes well under a second of a job's minutes: drawn at least this wide to be seen
    end = max((row["committed_at"] for row in rows), default=t0)
    min_width = 0.004 * max(end - t0, 1.0)
    for i, row in enumerate(rows):
        # shards in flight on one engine overlap: stagger them inside the lane so each stays visible
        dy = (i % 3) * 0.22 - 0.22
        y = lane("sampler", row["sampler_id"])
        ax.barh(y + dy, row["t_sample"], left=row["t_sample_start"] - t0, height=0.2, color=colours["sampler"],
                edgecolor="white", linewidth=0.3)
        ax.plot([row["t_read"] - t0], [y + dy], marker="|", color="black", markersize=4)
        ax.barh(lane("scorer", row["scorer_id"]), row["t_score"], left=row["t_score_start"] - t0, height=0.6,
                color=colours["scorer"], edgecolor="white", linewidth=0.3)
        ax.barh(commits + dy, max(row["committed_at"] - row["commit_start"], min_width), left=row["commit_start"] - t0,
                height=0.2, color=colours["commit"], edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(lanes)), [f"{kind} {who[-6:]}" for kind, who in lanes])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the job started (| = shard prompts read)")
    ax.set_title(title, fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, ["sample (per shard, staggered)", "score",
                        "pair + write (a commit task; at least 0.4% of the axis wide)"],
              loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    storage.write_figure(path, fig, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    out = sys.argv[1]
    m = json.loads(storage.read_text(storage.join(out, "manifest.json")))
    print(draw(m["timeline"]["spans"], m["timeline"]["t0"], storage.join(out, TIMELINE), m["timeline"]["title"]))
