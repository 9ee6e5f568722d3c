"""How long the tests take: the fast tier in this checkout, or CI (``bash .ci/run``) from a clean clone.

    python bench/suite.py --tier fast     # pytest -m "not slow" with this checkout's .venv
    python bench/suite.py --tier ci       # bash .ci/run in a clean clone of HEAD, ../shared beside it

The README's test times come from here: each run records its wall time, the tests that passed and (CI) the
seconds pytest took and the Ray starts its last lines count, in ``results/benchmarks.json``. ``--tier ci``
clones the committed HEAD, so uncommitted changes are not measured; it fails (exit 1, nothing recorded) when CI
fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (ROOT, BenchError, OneLineParser, command_line, measure_and_publish,  # noqa: E402
                          output_flags, settle_outputs)
from tuner.figures import headline  # noqa: E402

GOALS = {"fast": ("< 60 s", 60, "s"), "ci": ("< 12 minutes", 12, " minutes")}
PASSED = re.compile(r"(\d+) passed(?:, (\d+) deselected)?.* in ([\d.]+)s")
RAY = re.compile(r"Ray started (\d+) time")
SLOW = re.compile(r"^([\d.]+)s (setup|call|teardown) +(\S+)$", re.MULTILINE)  # pytest --durations lines


def summary(output: str) -> dict:
    """pytest's last summary line (tests passed, seconds), the conftest's count of Ray starts and the slowest
    tests' phases that ``--durations`` listed (CI's 25), slowest first."""
    found = PASSED.findall(output)
    if not found:
        raise BenchError("no pytest summary line with passed tests in the output")
    passed, _, seconds = found[-1]
    ray = RAY.findall(output)
    slowest = [{"seconds": float(s), "phase": phase, "test": test} for s, phase, test in SLOW.findall(output)]
    return {"passed": int(passed), "pytest_seconds": float(seconds), "ray_starts": int(ray[-1]) if ray else None,
            "slowest": slowest}


def fast() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-m", "not slow", "-q",
                           "-p", "no:logging"], cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"the fast tier failed: {proc.stdout.strip().splitlines()[-1:]}")
    return dict(summary(proc.stdout), wall_seconds=wall, tier="fast")


def ci() -> dict:
    shared = ROOT.parent / "shared"
    if not shared.is_dir():
        raise BenchError(f"{shared}: missing (CI reads the data beside the clone)")
    with tempfile.TemporaryDirectory(prefix="tuner-ci-") as folder:
        clone = Path(folder) / "main"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        (Path(folder) / "shared").symlink_to(shared)
        started = time.perf_counter()
        proc = subprocess.run(["bash", ".ci/run"], cwd=clone, capture_output=True, text=True)
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"CI failed (exit {proc.returncode}): {failures(proc.stdout + proc.stderr)}")
    return dict(summary(proc.stdout + proc.stderr), wall_seconds=wall, tier="ci")


def failures(output: str) -> str:
    """What a failed CI run says about its failure, in one line: pytest's FAILED and ERROR lines and its last
    summary, or the last line of the output; the whole output is kept in a file it names (not under results/)."""
    lines = output.strip().splitlines()
    said = [line for line in lines if line.startswith(("FAILED ", "ERROR "))] + [
        line.strip("= ") for line in lines[-5:] if re.search(r"\d+ (failed|error)", line)]
    with tempfile.NamedTemporaryFile("w", prefix="tuner-ci-", suffix=".log", delete=False) as log:
        log.write(output)
    return f"{'; '.join(said) or (lines[-1] if lines else 'no output')} (whole output: {log.name})"


def report(record: dict, command: str, started: str, minutes: float) -> str:
    what = "`pytest -m \"not slow\"`" if record["tier"] == "fast" else "`bash .ci/run` from a clean clone"
    return "\n".join([f"# Test suite: {what}", "", f"- command: `{command}`", f"- run: {started}",
                      f"- wall time: {record['wall_seconds'] / 60:.1f} minutes ({record['wall_seconds']:.0f} s)",
                      f"- tests passed: {record['passed']}, in {record['pytest_seconds']:.0f} s of pytest",
                      f"- Ray starts: {record['ray_starts']}", "",
                      *(["## Slowest tests", "", "| seconds | phase | test |", "|---|---|---|",
                         *(f"| {t['seconds']:.1f} | {t['phase']} | `{t['test']}` |" for t in record["slowest"]), ""]
                        if record.get("slowest") else [])])


def suite_figures(record: dict, args) -> list:
    goal, limit, unit = GOALS[record["tier"]]
    value = record["wall_seconds"] if unit == "s" else record["wall_seconds"] / 60
    value = round(value, 1)
    what = ("fast tier, pytest -m \"not slow\"" if record["tier"] == "fast"
            else "bash .ci/run from a clean clone (setup and every test)")
    return [headline(f"test suite: {what}, wall time on {os.cpu_count()} cores", value, unit, args.command,
                     goal=goal, met=value < limit, started=args.started, tests=record["passed"],
                     pytest_seconds=round(record["pytest_seconds"]), ray_starts=record["ray_starts"])]


def main(argv=None) -> int:
    parser = OneLineParser(prog="python bench/suite.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--tier", choices=("fast", "ci"), required=True)
    output_flags(parser, "suite-TIER.md")
    args = parser.parse_args(argv)
    args.command = command_line("suite.py", argv if argv is not None else sys.argv[1:])
    settle_outputs(parser, args, f"suite-{args.tier}.md", args.command)
    return measure_and_publish(args, fast if args.tier == "fast" else ci,
                               lambda record, started, minutes: report(record, args.command, started, minutes),
                               lambda record: suite_figures(record, args))


if __name__ == "__main__":
    sys.exit(main())
