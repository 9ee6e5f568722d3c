"""One search with tuner's chosen packing against the same search one trial at a time, side by side.

    python bench/packing.py [--output results/packing.md] [--work DIR] [--quick] -- TUNER_RUN_FLAGS...

Runs ``python -m tuner.run TUNER_RUN_FLAGS --quiet`` twice, one after the other on this machine, in ``--work``
(each side's earlier search there overwritten):
first as given (no ``--cpus-per-trial``: tuner measures the stage's step and chooses the trials at once), then with
``--cpus-per-trial`` set to every core (one trial at a time, the default before packing). It reports each side's
wall time, packing and result (the best trial's validation and test F1; for a front search, the front's test
hypervolume), and records the wall-time ratio: the packing default holds where it is no slower. ``--quick`` is its
smoke mode (writes to a temporary folder; the flags still say what runs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, BenchError, OneLineParser, output_flags, publish_from_work  # noqa: E402
from tuner.config import usable_cpus  # noqa: E402
from tuner.figures import headline  # noqa: E402

SIDES = ("chosen", "one at a time")


def search(name: str, work: Path, flags: list[str], *extra: str) -> dict:
    """One ``tuner.run`` in ``work/<name>``: its wall time, packing and best result."""
    results = work / name.replace(" ", "-")
    argv = [sys.executable, "-m", "tuner.run", *flags, "--results-dir", str(results), "--quiet", "--overwrite",
            *extra]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    (work / f"{results.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise BenchError(f"{name}: tuner.run exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    (stage_dir,) = [p for p in results.iterdir() if (p / "search_settings.yaml").is_file()]
    best = json.loads((stage_dir / "best" / "result.json").read_text())
    packed = yaml.safe_load((stage_dir / "search_settings.yaml").read_text())["packing"]
    return {"wall_seconds": wall, "stage": stage_dir.name, "packing": packed, "val_f1": best["val_f1"],
            "test_f1": best["test_f1"], "hypervolume": (best.get("hypervolume") or {}).get("test")}


def run(args) -> dict:
    args.work.mkdir(parents=True, exist_ok=True)
    cores = usable_cpus()
    sides = {SIDES[0]: search(SIDES[0], args.work, args.flags),
             SIDES[1]: search(SIDES[1], args.work, args.flags, "--cpus-per-trial", str(cores))}
    return {"flags": args.flags, "cores": cores, "sides": sides}


def report(record: dict, command: str, started: str, minutes: float) -> str:
    lines = ["# Trials at once: tuner's chosen packing against one trial at a time", "",
             f"- command: `{command}`", f"- run: {started}, {minutes:.1f} minutes, {record['cores']} cores",
             f"- chosen: `python -m tuner.run {' '.join(record['flags'])} --quiet`; one at a time: the same with "
             f"`--cpus-per-trial {record['cores']}`", "",
             "| side | trials at once | threads each | wall time, min | best val F1 | its test F1 | front hypervolume |",
             "|---|---|---|---|---|---|---|"]
    for name, side in record["sides"].items():
        volume = "-" if side["hypervolume"] is None else f"{side['hypervolume']:.4f}"
        lines.append(f"| {name} | {side['packing']['trials_at_once']} | {side['packing']['threads']} | "
                     f"{side['wall_seconds'] / 60:.1f} | {side['val_f1']:.4f} | {side['test_f1']:.4f} | {volume} |")
    chosen, alone = (record["sides"][s] for s in SIDES)
    lines += ["", f"Wall time, chosen / one at a time: {chosen['wall_seconds'] / alone['wall_seconds']:.3f}x."]
    return "\n".join(lines) + "\n"


def packing_figures(record: dict, args) -> list:
    """The wall-time ratio, held to no slower where tuner packed trials; where it chose one trial at a time, the two
    sides are the same setting and the ratio is only the runs' noise (no goal)."""
    chosen, alone = (record["sides"][s] for s in SIDES)
    what = f"{chosen['stage']} search, `{' '.join(record['flags'])}`, {record['cores']} cores"
    ratio = round(chosen["wall_seconds"] / alone["wall_seconds"], 3)
    packed = chosen["packing"]["trials_at_once"] > 1
    run = {"command": args.command, "started": args.started, "inputs": ()}
    # the count chosen names the figure: a rerun that chooses another packing measures another setting
    return [headline(f"{what}: wall time with the chosen packing ({chosen['packing']['trials_at_once']} at once) / one "
                     "trial at a time", ratio, "x",
                     goal="<= 1x" if packed else None, met=ratio <= 1 if packed else None,
                     peer="the same search one trial at a time (--cpus-per-trial all cores)",
                     threads=chosen["packing"]["threads"],
                     chosen_minutes=round(chosen["wall_seconds"] / 60, 1),
                     alone_minutes=round(alone["wall_seconds"] / 60, 1), chosen_test_f1=round(chosen["test_f1"], 4),
                     alone_test_f1=round(alone["test_f1"], 4), chosen_hypervolume=chosen["hypervolume"],
                     alone_hypervolume=alone["hypervolume"], **run)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = OneLineParser(prog="python bench/packing.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--work", type=Path, help="where the searches go (default: a folder beside --output)")
    output_flags(parser, "packing.md")
    parser.add_argument("--quick", action="store_true", help="smoke mode: writes to a temporary folder")
    args = parser.parse_args(own)
    named = [flag.split("=", 1)[0] for flag in flags]
    stage = [value for flag, value in zip(flags, flags[1:] + [""]) if flag == "--stage"] + \
        [flag.split("=", 1)[1] for flag in flags if flag.startswith("--stage=")]
    if not stage:
        parser.error("give the search after --, such as: -- --stage teacher --trials 4 --profile cpu --data DIR")
    if "all" in stage:
        parser.error("--stage all: time one stage at a time (its packing is chosen per stage)")
    for taken in ("--cpus-per-trial", "--gpus-per-trial", "--results-dir", "--resume", "--overwrite", "--quiet"):
        if taken in named:
            parser.error(f"{taken}: the benchmark sets it for each side")
    args.flags = flags
    return publish_from_work(parser, args, "packing.py", argv, run, report, packing_figures)


if __name__ == "__main__":
    sys.exit(main())
