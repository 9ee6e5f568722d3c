"""``results/benchmarks.json``: headline figures, each written by the run that measured it, with the command line,
commit, date and machine of that run (as pytest-benchmark's ``machine_info`` and ``commit_info``).

``tuner.run --record FILE`` and ``tuner.deploy --record FILE`` append theirs, the bench scripts theirs, all through
``record``; nothing else writes the file, and a ``--quick``, ``--dry-run`` or smoke run never writes under the
checkout's ``results/``. ``bench/headlines.py`` turns the file into ``results/benchmarks.md`` and the README's
results block.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from tuner.errors import TunerError

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "results" / "benchmarks.json"
REQUIRED = ("measure", "value", "unit", "command", "commit", "date", "machine")
# a run with one of these flags measures plumbing, not tuner: its figures never land in the checkout's results/
NOT_FIGURES = ("--quick", "--dry-run", "--profile smoke")


def command_line(program: str, argv: list) -> str:
    """How a figure names the command that measured it: ``python -m tuner.run --stage all ...``."""
    return " ".join(["python", *shlex.split(program), *map(shlex.quote, map(str, argv))])


# one figure per front member (``tuner.run --record``): a front's members, by stage and settings, come and go together
FRONT_MEMBER = re.compile(r"^(?P<stage>\S+) front member (?P<name>\S+) \((?P<where>.*)\): test F1$")
CODE = ("tuner", "search_spaces", "pyproject.toml")  # what tuner's figures depend on; a benchmark's: bench/ too


def commit_info(code: tuple = CODE) -> str:
    """The checkout's short commit, ``+dirty`` when the files under ``code`` differ from it; ``unknown`` outside
    git."""
    def git(*args: str) -> str:
        try:
            proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", *code) else "")


def machine_info() -> dict:
    """The CPU model and its threads, the GPU where torch sees one, and the versions that move figures."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_threads": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    return info


def provenance(code: tuple = CODE) -> dict:
    """The commit, date and machine of a run, taken when it starts: the code that ran, not what HEAD is at its end."""
    return {"commit": commit_info(code), "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
            "machine": machine_info()}


def headline(measure: str, value: float | None, unit: str, command: str, *, goal: str | None = None,
             met: bool | None = None, peer: str = "none (absolute)", peer_settings: str = "", seeds: int | None = None,
             inputs: tuple = (), started: dict | None = None, **details) -> dict:
    """One figure with its provenance (``started``: the run's, from ``provenance()`` at its start; now if None).
    ``peer`` is what it is held against (``default``: the peer at its library's defaults, ``tuned``: as an expert
    would set it up, or a named method); ``inputs`` are the files it read."""
    entry = {"measure": measure, "value": value, "unit": unit, "goal": goal, "met": met, "peer": peer,
             "peer_settings": peer_settings, "command": command,
             **(started or provenance(CODE + ("bench",) if is_benchmark(command) else CODE))}
    if seeds is not None:
        entry["seeds"] = seeds
    if inputs:
        entry["inputs"] = [str(i) for i in inputs]
    if details:
        entry["details"] = details
    return entry


def is_benchmark(command: str) -> bool:
    """``python bench/x.py ...`` or ``python -m bench x ...``: its figures depend on bench/ too."""
    words = command.split()[1:3]
    return any(word == "bench" or word.startswith("bench/") for word in words)


def read(path: Path = BENCHMARKS) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["headlines"]
    except (ValueError, KeyError, TypeError):
        raise TunerError(f"{path}: not a benchmarks file (a JSON object with a 'headlines' list)") from None


def check_writable(path: Path, command: str) -> None:
    """Refuse, before any work, a figures file that ``record`` would refuse: a quick, dry or smoke run's in the
    checkout's ``results/``, or a file that is not a benchmarks file."""
    if Path(path).resolve().is_relative_to(BENCHMARKS.parent.resolve()):
        flag = next((f for f in NOT_FIGURES if f in command), None)
        if flag:
            raise TunerError(f"--record {path}: a {flag} run's figures never go under results/; write them elsewhere")
    read(Path(path))


def front_member(stage: str, name: str, where: str) -> str:
    """The measure of a front member's test F1 figure."""
    return f"{stage} front member {name} ({where}): test F1"


def front_member_of(entry: dict) -> tuple[str, str] | None:
    """(stage, settings) of a front member's figure; None for any other figure."""
    found = FRONT_MEMBER.match(entry["measure"])
    return (found["stage"], found["where"]) if found else None


def record(entries: list[dict], path: Path = BENCHMARKS) -> list[dict]:
    """Write ``entries`` into ``path``: each replaces the entry of the same ``measure`` and ``peer`` where it stands,
    new ones go at the end; a front's members replace every member of an earlier front of the same stage and
    settings (``front_member_of``), so no member of another search stays beside them. Refuses an entry without its provenance, and a quick, dry or smoke run's figures in
    the checkout's ``results/``. Returns the file's entries."""
    for entry in entries:
        missing = [key for key in REQUIRED if entry.get(key) in (None, "", {}) and key != "value"]
        if missing:
            raise TunerError(f"{path}: the figure {entry.get('measure')!r} lacks {', '.join(missing)}")
    for entry in entries:
        check_writable(path, entry["command"])
    new = {(e["measure"], e["peer"]): e for e in entries}
    fronts = {front_member_of(e) for e in entries} - {None}
    current = [e for e in read(path) if front_member_of(e) not in fronts or (e["measure"], e["peer"]) in new]
    merged = [new.pop((e["measure"], e["peer"]), e) for e in current] + list(new.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"headlines": merged}, indent=2) + "\n")
    return merged
