"""A tuner search spread over a Ray cluster of two nodes on this machine's loopback.

    .venv/bin/python scripts/two_node_cluster.py [--results-dir results/cluster] [--trials 4] [--profile smoke]
                                                 [--kill-second-node]

Starts a head node and a second node (each with 1 CPU and its own custom resource) bound to 127.0.0.1 with
Ray's multi-node test cluster (``ray.cluster_utils.Cluster``: a worker node started by ``ray start --address``
cannot bind to loopback on Linux), runs ``python -m tuner.run --address ...`` against it with storage on a path
both nodes see, then checks that trials ran on both nodes and that the results are complete. Exits non-zero
otherwise. With ``--kill-second-node`` it kills the second node under a running trial and checks that the
search still ends with every trial finished, none restarted from scratch. On real machines, the same search runs
with ``ray start --head`` on one and ``ray start --address HEAD:6379`` on the others, then ``python -m tuner.run --address auto ...`` on the head.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every port on 127.0.0.1

from ray.cluster_utils import Cluster  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def reports_of(experiment: Path) -> dict:
    """trial folder -> its reports, one per line of Ray's result.json."""
    return {path.parent.name: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for path in experiment.glob("*/result.json")}


def trial_nodes(experiment: Path) -> dict:
    """trial folder -> the Ray node ids its epochs ran on."""
    return {name: {r["node_id"] for r in reports} for name, reports in reports_of(experiment).items()}


def kill_when_checkpointed(cluster, node, driver, experiment: Path, timeout: float = 300) -> str:
    """Remove ``node`` (its raylet and workers killed, as a machine that dies) once a trial running on it has
    checkpointed an epoch before its last; returns that trial's folder name."""
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        for name, reports in (reports_of(experiment) if experiment.is_dir() else {}).items():
            last = reports[-1] if reports else {}
            if (last.get("node_id") == node.node_id and not last.get("done")
                    and any(r["checkpointed"] for r in reports)):
                cluster.remove_node(node, allow_graceful=False)
                return name
        time.sleep(0.2)
    raise SystemExit("no trial checkpointed an epoch on the second node before the search ended")


def check_node_loss(experiment: Path, killed: str, trials: int) -> list[str]:
    """What went wrong after the node died: a trial unfinished, errored or run again from its first epoch, or the
    killed trial not continued from its checkpoint."""
    problems = []
    found = reports_of(experiment)
    if len(found) != trials:
        problems.append(f"{len(found)} trials, not {trials}")
    for name, reports in found.items():
        if not reports or not reports[-1].get("done"):
            problems.append(f"{name} did not finish")
        if sum(1 for r in reports if r["epoch"] == 1 and not r.get("rereport")) > 1:
            problems.append(f"{name} ran its first epoch twice: restarted from scratch")
    if not any(r["iterations_since_restore"] < r["training_iteration"] for r in found.get(killed, [])):
        problems.append(f"{killed} was not continued from its checkpoint")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results" / "cluster")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "conll2003"))
    parser.add_argument("--kill-second-node", action="store_true",
                        help="kill the second node once a trial there has checkpointed an epoch; the search must end "
                             "with every trial finished, the killed one continued from its checkpoint on the head")
    args = parser.parse_args(argv)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1},
                                                            "include_dashboard": False})
    second = cluster.add_node(num_cpus=1, resources={"second": 1})
    cluster.wait_for_nodes()
    experiment = args.results_dir / "teacher" / "search"
    killed = None
    try:
        command = [sys.executable, "-m", "tuner.run", "--stage", "teacher", "--trials", str(args.trials),
                   "--profile", args.profile, "--data", args.data, "--results-dir", str(args.results_dir.resolve()),
                   "--address", cluster.address, "--cpus-per-trial", "1", "--overwrite", "--quiet",
                   "--process-per-trial"]  # reused processes would run these seconds-long trials all in the first
        if args.kill_second_node:  # epochs long enough to catch a trial between two of them; tuner's default retries
            command += ["--epochs", "4", "--train-sentences", "200"]
        print("running:", " ".join(command), flush=True)
        driver = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        if args.kill_second_node:
            killed = kill_when_checkpointed(cluster, second, driver, experiment)
            print(f"killed the second node under {killed}", flush=True)
        returncode = driver.wait()
    finally:
        cluster.shutdown()
    if returncode != 0:
        print(f"the search failed (exit {returncode})", file=sys.stderr)
        return 1
    nodes = trial_nodes(experiment)
    used = set().union(*nodes.values()) if nodes else set()
    print(f"{len(nodes)} trials on {len(used)} nodes: " + ", ".join(f"{t.split('_')[2]}@{'/'.join(n)[:8]}"
                                                                      for t, n in sorted(nodes.items())))
    complete = len(nodes) == args.trials and (args.results_dir / "teacher" / "best" / "result.json").is_file()
    if len(used) < 2 or not complete:
        print("expected the trials on both nodes and a complete result", file=sys.stderr)
        return 1
    if killed:
        problems = check_node_loss(experiment, killed, args.trials)
        if problems:
            print("after the node died: " + "; ".join(problems), file=sys.stderr)
            return 1
        print(f"node lost: every trial finished, {killed} continued from its checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
