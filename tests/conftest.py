"""Shared fixtures: the CoNLL data in ../shared, the packaged tokenizer, tiny models built from a config, the
smoke pipeline and the MiniLM pipeline (slow tier, each made once per run), and the CLI run in-process or as a
subprocess."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Under pytest-xdist (pyproject's addopts: `-n auto`, a worker per usable core, `--dist loadgroup`) each worker runs
# on a core of its own, and so does all it starts: tuner sees one usable CPU (tuner.config.usable_cpus), its Ray one
# CPU, a trial one thread, so two workers' trainings never share a core's threads. Set before torch sizes its
# thread pool.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
if XDIST_WORKER and hasattr(os, "sched_setaffinity"):
    _cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {_cpus[int(XDIST_WORKER.removeprefix("gw")) % len(_cpus)]})


def _held(port: int):
    """A listening socket on 127.0.0.1:``port``, or None where another worker holds it."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        held.bind(("127.0.0.1", port))
        held.listen()
        return held
    except OSError:
        held.close()
        return None


# Two workers' searches starting together would both find Ray's dashboard port (8265) and optuna-dashboard's
# (8080) free, and the second to bind fails; held here, every search takes a port the OS picks for it.
HELD_PORTS = [_held(port) for port in (8265, 8080)] if XDIST_WORKER else []

from tuner.config import usable_cpus  # noqa: E402 - after the worker's pinning

ROOT = Path(__file__).resolve().parent.parent
# ../shared beside the checkout (CI, a developer's machine), else shared/ inside it (a copy that carries it, as
# scripts/gpu_check.sh accepts too)
SHARED_DATA = next((folder / "data" / "conll2003" for folder in (ROOT.parent / "shared", ROOT / "shared")
                    if (folder / "data" / "conll2003" / "train.txt").is_file()),
                   ROOT.parent / "shared" / "data" / "conll2003")

# every Ray start (a search's ray.init, `ray start`) makes a session folder here: the count the suite's summary gives
RAY_SESSIONS = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray"


def ray_sessions() -> set:
    return set(RAY_SESSIONS.glob("session_2*"))


def pytest_sessionstart(session):
    session.config.stash[RAY_BEFORE] = ray_sessions()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    started = len(ray_sessions() - config.stash.get(RAY_BEFORE, set()))
    terminalreporter.write_line(f"Ray started {started} time(s) in this run (new session folders in {RAY_SESSIONS})")


RAY_BEFORE = pytest.StashKey[set]()


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): a worker per core this process may use, at most 4 (each worker is pinned to
    one; more would wait on the few long searches), and none on one core (the tests run in pytest's process)."""
    cpus = usable_cpus()
    return 0 if cpus == 1 else min(4, cpus)

# The session runs the tests read. Under pytest-xdist's `--dist loadgroup` every test that reads one runs in the
# same worker, so each run is still made once.
SHARED_RUNS = ("minilm_run", "pipeline_run")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        shared = [name for name in SHARED_RUNS if name in item.fixturenames]
        if shared:
            item.add_marker(pytest.mark.xdist_group("+".join(shared)))
    # The slow tests first (each module's in its own order, so a module's fixtures are made once): the workers
    # take the long searches while the others run, and the suite ends on tests of a second, not on one worker's
    # last search while the other waits (longest first, as a scheduler of unequal jobs does).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _stage_names() -> tuple:
    from tuner import registry

    return registry.names()


STAGES = _stage_names()


@pytest.fixture(scope="session")
def conll_dir() -> Path:
    assert (SHARED_DATA / "train.txt").is_file(), f"CoNLL-2003 data expected at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    from tuner.models import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture
def tiny_model(tokenizer):
    from tuner.data import CONLL_LABELS
    from tuner.models import initial_token_classifier

    return initial_token_classifier("tiny", list(CONLL_LABELS), seed=0, vocab_size=len(tokenizer))


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def run_main(main, *args, capsys) -> tuple[int, str, str]:
    """A command's ``main(argv)`` in this process: (exit status, stdout, stderr). argparse's exit counts too."""
    capsys.readouterr()
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def run_cli(*args, module="tuner.run", timeout=600, one_core=False):
    """``python -m module args``; ``one_core``: on the first CPU this process may use only, so the command sees a
    one-core machine (one trial at a time, one thread), whatever machine or worker runs the suite."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT, preexec_fn=on_one_core if one_core else None)


def on_one_core() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))} if folder.exists() else {}


def copied(folder: Path, to: Path, *parts: str) -> Path:
    """``folder`` (or only its ``parts``, each a sub-folder) copied to ``to``, for a test that writes there."""
    for part in parts or ("",):
        shutil.copytree(folder / part, to / part, dirs_exist_ok=True)
    return to


def searched(*args, one_core=False):
    """``tuner.run`` with ``args``, which must succeed: the finished process (its output for the tests)."""
    proc = run_cli(*args, one_core=one_core)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return proc


# One trial at a time on every usable core, as given flags: the same-seed runs must not depend on what
# tuner.packing measures on a loaded machine. The pinned numbers also run on one core (threads change float sums).
WHOLE_NODE = ("--cpus-per-trial", usable_cpus())


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, conll_dir):
    """The smoke pipeline (tiny random BERTs, every stage, 2 trials each): the plumbing's files and numbers. Tests
    read it; one that writes works on a copy (``copied``)."""
    results = tmp_path_factory.mktemp("pipeline") / "results"
    return results, searched("--stage", "all", "--trials", 2, "--profile", "smoke", "--data", conll_dir,
                             "--results-dir", results, "--cpus-per-trial", 1, one_core=True)


# The MiniLM pipeline's sizes: enough sentences that the packaged MiniLM learns entities in 2 epochs, so every
# stage scores a nonzero F1 and int8 has F1 to lose; a student budget the MiniLM students fit under.
MINILM_SIZES = ("--profile", "smoke", "--model", "minilm", "--epochs", 2, "--train-sentences", 300,
                "--eval-sentences", 100, "--test-sentences", 60, "--max-params", 5_000_000)


@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory, conll_dir):
    """Every stage from the packaged MiniLM, 2 trials each, with --quiet: the suite's one trained MiniLM teacher
    (the deploy and front tests start from it) and its golden numbers."""
    results = tmp_path_factory.mktemp("minilm") / "results"
    return results, searched("--stage", "all", "--trials", 2, *MINILM_SIZES, "--data", conll_dir,
                             "--results-dir", results, "--quiet", "--cpus-per-trial", 1, one_core=True)
