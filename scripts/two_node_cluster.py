"""A tuner search spread over a Ray cluster of two nodes on this machine's loopback.

    .venv/bin/python scripts/two_node_cluster.py [--results-dir results/cluster] [--trials 4] [--profile smoke]

Starts a head node and a second node (each with 1 CPU and its own custom resource) bound to 127.0.0.1 with
Ray's multi-node test cluster (``ray.cluster_utils.Cluster``: a worker node started by ``ray start --address``
cannot bind to loopback on Linux), runs ``python -m tuner.run --address ...`` against it with storage on a path
both nodes see, then checks that trials ran on both nodes and that the results are complete. Exits non-zero
otherwise. On real machines, the same search runs with ``ray start --head`` on one and
``ray start --address HEAD:6379`` on the others, then ``python -m tuner.run --address auto ...`` on the head.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every port on 127.0.0.1

from ray.cluster_utils import Cluster  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def trial_nodes(experiment: Path) -> dict:
    """trial folder -> the Ray node ids its epochs ran on."""
    nodes = {}
    for path in experiment.glob("*/result.json"):
        reports = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        nodes[path.parent.name] = {r["node_id"] for r in reports}
    return nodes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results" / "cluster")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "conll2003"))
    args = parser.parse_args(argv)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1},
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"second": 1})
    cluster.wait_for_nodes()
    try:
        command = [sys.executable, "-m", "tuner.run", "--stage", "teacher", "--trials", str(args.trials),
                   "--profile", args.profile, "--data", args.data, "--results-dir", str(args.results_dir.resolve()),
                   "--address", cluster.address, "--cpus-per-trial", "1", "--overwrite", "--quiet",
                   "--process-per-trial"]  # reused processes would run these seconds-long trials all in the first
        print("running:", " ".join(command), flush=True)
        proc = subprocess.run(command, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    finally:
        cluster.shutdown()
    if proc.returncode != 0:
        print(f"the search failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    nodes = trial_nodes(args.results_dir / "teacher" / "search")
    used = set().union(*nodes.values()) if nodes else set()
    print(f"{len(nodes)} trials on {len(used)} nodes: " + ", ".join(f"{t.split('_')[2]}@{'/'.join(n)[:8]}"
                                                                      for t, n in sorted(nodes.items())))
    complete = len(nodes) == args.trials and (args.results_dir / "teacher" / "best" / "result.json").is_file()
    if len(used) < 2 or not complete:
        print("expected the trials on both nodes and a complete result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
