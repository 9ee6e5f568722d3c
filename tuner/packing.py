"""Trials at once: how many trials of a stage share a node, and with how many threads (or what share of a GPU)
each, when ``--cpus-per-trial`` and ``--gpus-per-trial`` are not given.

On CPUs the choice is measured: a few training steps of the stage's typical trial at 1 thread and at every
core of the node, timed on the driver before the search. Amdahl's law through the two times predicts a step at
any thread count; the node runs ``cores // threads`` trials of ``threads`` threads each for the thread count
that ends the search soonest (in waves of that many trials, each trial at once beyond the first costing a worker
process's start), and packs only where that ends it ``PACKING_GAIN`` times sooner than one trial on every core
(trials that share a node also share its memory bandwidth, which the single measurements do not see). A small
student, whose step barely scales across threads, then runs a trial per core; a model whose step scales keeps one
trial with every core, and so do trials of a few seconds (the smoke profile's), which a second worker's start
would outlast. The memory the measured trial took, with its shared inputs and a worker process's own, caps how
many trials fit.

On a GPU the share follows the measured trial's peak memory: up to ``GPU_TRIALS`` trials per GPU, as many as fit in
``MEMORY_SHARE`` of it. The pipeline measures only a machine it runs on (``for_stage``); on a
cluster joined with ``--address`` the nodes are not the driver, so a trial gets a node unless the flags say
otherwise.

Timing on the driver leaves it as it was but for glibc's setting to keep freed memory (``tuner.memory``), which
training sets once per process; the freed heap itself is handed back when the measurement ends.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuner.config import RunSettings, TrainSettings, default_threads
from tuner.data import Encoded, TaskData
from tuner.errors import TunerError, first_line, quieted
from tuner.memory import release_memory
from tuner.registry import Stage
from tuner.spaces import SearchSpace
from tuner.task import SEARCH_SETTINGS, read_search_settings

MEASURED_STEPS = 6  # training steps per timed epoch; the first epoch warms up, the second is timed
MEASURED_SENTENCES = 8  # validation sentences each measured epoch ends on (the loop evaluates every epoch)
PACKING_GAIN = 1.15  # packing must end the search this many times sooner than one trial on every core
MEMORY_SHARE = 0.8  # of the memory available (a GPU's: its total) that packed trials may take together
WORKER_BYTES = 1 << 29  # a trial's worker process before training: Python, torch, transformers, Ray (about 0.5 GiB)
WORKER_START_SECONDS = 10.0  # a worker process's start (Python, torch, Ray) on a loaded 2-core node
GPU_TRIALS = 4  # the most trials per GPU (the count scripts/gpu_check.sh measures against one)
CUDA_CONTEXT_BYTES = 1 << 30  # a trial process's CUDA context and allocator cache beyond its peak allocation
SHORTEST_STEP = 1e-6  # seconds: a step timed faster than this is timed as this

FLAGS = "--cpus-per-trial / --gpus-per-trial"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Packing:
    """What each trial of a stage gets, and why (``reason``, the line the run prints)."""

    cpus_per_trial: float
    gpus_per_trial: float
    threads: int  # torch threads in each trial
    trials_at_once: int  # per node
    reason: str
    step_seconds: dict = field(default_factory=dict, compare=False)  # threads (or "gpu") -> measured s per step

    def record(self) -> dict:
        """What ``search_settings.yaml`` keeps and ``--resume`` compares (a resumed search packs as it started)."""
        return {"cpus_per_trial": self.cpus_per_trial, "gpus_per_trial": self.gpus_per_trial,
                "threads": self.threads, "trials_at_once": self.trials_at_once}

    def described(self) -> dict:
        """``record`` with why it was chosen and the step times measured, as ``search_settings.yaml`` keeps it."""
        return {**self.record(), "reason": self.reason,
                "step_seconds": {str(k): round(v, 5) for k, v in self.step_seconds.items()}}

    def line(self) -> str:
        each = (f"{self.threads} thread{'s' * (self.threads != 1)}"
                + (f" and {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ""))
        return f"{self.trials_at_once} trial{'s' * (self.trials_at_once != 1)} at once per node, {each} each ({self.reason})"


def given(cpus_per_trial: float, gpus_per_trial: float, cpus_per_node: int, gpus_per_node: float) -> Packing:
    """The packing ``--cpus-per-trial`` / ``--gpus-per-trial`` ask for (a missing CPU count: the GPU share of the
    node's CPUs, or all of them)."""
    cpus = cpus_per_trial or share_of_cpus(gpus_per_trial, cpus_per_node, gpus_per_node)
    at_once = math.floor(cpus_per_node / cpus + 1e-9) if cpus else 1
    if gpus_per_trial and gpus_per_node:
        at_once = min(at_once, math.floor(gpus_per_node / gpus_per_trial + 1e-9))
    return Packing(cpus, gpus_per_trial, default_threads(cpus), max(1, at_once), f"given by {FLAGS}")


def share_of_cpus(gpus_per_trial: float, cpus_per_node: int, gpus_per_node: float) -> int:
    """CPUs per trial when only a GPU share is given: the same share of the node's CPUs, so that
    ``--gpus-per-trial 0.25`` runs four trials at once; without GPUs all of the node, one trial at a time."""
    if gpus_per_trial > 0 and gpus_per_node > 0:
        return max(1, int(cpus_per_node * min(1.0, gpus_per_trial / gpus_per_node)))
    return cpus_per_node


def recorded(record, where: str) -> Packing:
    """The packing a search started with, from its ``search_settings.yaml`` entry (``Packing.record``); a damaged
    entry is a one-line error naming ``where`` (the file)."""
    try:
        packed = Packing(float(record["cpus_per_trial"]), float(record["gpus_per_trial"]), int(record["threads"]),
                         int(record["trials_at_once"]), "as the search started (search_settings.yaml)")
    except (TypeError, KeyError, ValueError) as exc:
        raise TunerError(f"{where}: packing is damaged ({type(exc).__name__}: {exc}); pass --overwrite to start "
                         "again") from None
    if min(packed.cpus_per_trial, packed.gpus_per_trial) < 0 or min(packed.threads, packed.trials_at_once) < 1:
        raise TunerError(f"{where}: packing holds a negative or zero count ({packed.record()})")
    return packed


def step_time(one: float, every: float, cores: int, threads: int) -> float:
    """A training step's seconds at ``threads`` threads, from its measured seconds at 1 thread (``one``) and at
    ``cores`` threads (``every``): measured at those two, through Amdahl's law between them."""
    one, every = max(one, SHORTEST_STEP), max(every, SHORTEST_STEP)
    if threads >= cores:
        return every
    if threads <= 1:
        return one
    serial = min(1.0, max(0.0, (every / one - 1 / cores) / (1 - 1 / cores)))
    return one * (serial + (1 - serial) / threads)


def search_seconds(one: float, every: float, cores: int, threads: int, trials: int, trial_steps: int) -> float:
    """A search's predicted seconds with ``cores // threads`` trials of ``threads`` threads at once: waves of that
    many trials of ``trial_steps`` steps each, plus a worker's start for each trial at once beyond the first."""
    at_once = max(1, cores // threads)
    return (math.ceil(trials / at_once) * trial_steps * step_time(one, every, cores, threads)
            + WORKER_START_SECONDS * (at_once - 1))


def choose_cpu(one: float, every: float, cores: int, trial_bytes: int, available_bytes: int | None, trials: int,
               trial_steps: int) -> Packing:
    """The thread count per trial that finishes the search's ``trials`` of ``trial_steps`` training steps soonest
    on a node of ``cores`` (``search_seconds``), among those that leave no core idle (divisors of ``cores``) and
    fit in the memory (``trial_bytes`` per trial, ``available_bytes`` on the node, None: unknown). One trial on
    every core unless packing ends the search ``PACKING_GAIN`` times sooner."""
    fits = cores if available_bytes is None else max(1, int(MEMORY_SHARE * available_bytes // max(1, trial_bytes)))
    seconds = {threads: search_seconds(one, every, cores, threads, trials, trial_steps)
               for threads in range(1, cores + 1) if cores % threads == 0 and cores // threads <= min(fits, trials)}
    best = min(seconds, key=seconds.get, default=cores)
    alone = search_seconds(one, every, cores, cores, trials, trial_steps)
    if best != cores and alone < PACKING_GAIN * seconds[best]:
        best = cores
    measured = f"a training step took {one:.3g} s at 1 thread, {every:.3g} s at {cores}"
    steps = {1: one, cores: every}
    capped = f", {fits} trial{'s' * (fits != 1)} fit in memory" if fits < min(cores, trials) else ""
    if best == cores:
        why = f"packing would not end the search {PACKING_GAIN:g}x sooner"
        return Packing(float(cores), 0.0, cores, 1, f"{measured}{capped}: {why}", steps)
    return Packing(float(best), 0.0, best, cores // best, f"{measured}{capped}: {alone / seconds[best]:.2f}x sooner "
                   "than one trial on every core", steps)


def choose_gpu(peak_bytes: int, gpu_bytes: int, gpus_per_node: float, cpus_per_node: int, step: float,
               trials: int) -> Packing:
    """Trials per GPU from the measured trial's peak GPU memory (plus ``CUDA_CONTEXT_BYTES``): as many as fit in
    ``MEMORY_SHARE`` of the GPU, at most ``GPU_TRIALS`` and no more than the search's ``trials`` need to fill the
    node's GPUs; each gets the same share of the node's CPUs (at least one), which may cap the trials at once."""
    gpus = max(1.0, gpus_per_node)
    fits = int(MEMORY_SHARE * gpu_bytes // max(1, peak_bytes + CUDA_CONTEXT_BYTES))
    per_gpu = max(1, min(GPU_TRIALS, math.ceil(trials / gpus), fits))
    cpus = share_of_cpus(1 / per_gpu, cpus_per_node, gpus_per_node)
    at_once = max(1, min(math.floor(gpus * per_gpu + 1e-9), cpus_per_node // cpus))
    return Packing(float(cpus), 1 / per_gpu, default_threads(cpus), at_once,
                   f"a training step took {step:.3g} s and {peak_bytes / 2**30:.2f} GiB of the GPU's "
                   f"{gpu_bytes / 2**30:.0f} GiB: {per_gpu} per GPU", {"gpu": step})


def typical_config(stage: Stage, space: SearchSpace, inputs, shapes: list[dict] | None) -> dict:
    """A config to time the stage's trials by: each searched hyperparameter at the middle of its range (a
    log-uniform one at its geometric middle, a choice at its middle value) and, in a front search, the largest
    shape (the one that gains most from threads: packing chosen for it suits the smaller ones)."""
    config = {}
    for p in space.params:
        if p.type == "choice":
            config[p.name] = p.values[len(p.values) // 2]
        elif p.type == "loguniform":
            config[p.name] = math.sqrt(p.low * p.high)
        elif p.type == "int":
            config[p.name] = int(round((p.low + p.high) / 2))
        else:
            config[p.name] = (p.low + p.high) / 2
    if shapes:
        config.update(max(shapes, key=lambda shape: stage.size(inputs, shape) if stage.size else 0))
    return config


def first(data: Encoded, count: int) -> Encoded:
    return Encoded(*(getattr(data, f.name)[:count] for f in dataclasses.fields(Encoded)))


def step_seconds(stage: Stage, config: dict, task: TaskData, inputs, settings: TrainSettings, threads: int,
                 device: str = "cpu") -> float:
    """Seconds per training step of ``stage`` at ``config`` on ``threads`` threads: the second of two epochs of
    ``MEASURED_STEPS`` steps each over the first training sentences (a stage's inputs are per training
    sentence, so its first sentences keep theirs)."""
    small = dataclasses.replace(task, train=first(task.train, MEASURED_STEPS * settings.batch_size),
                                validation=first(task.validation, MEASURED_SENTENCES))
    trial = dataclasses.replace(settings, epochs=2, threads=threads, device=device)
    steps = math.ceil(len(small.train) / settings.batch_size)
    with quieted("tuner.training", logging.WARNING):  # the timed epochs' lines are no trial's
        *_, last = stage.train(config, small, inputs, trial)
    return last.metrics["train_seconds"] / steps


def resident_bytes() -> int:
    """This process's resident memory (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def available_bytes() -> int | None:
    """The memory this machine can still give: ``MemAvailable``, or less where a cgroup (a container) limits this
    process to less; None where neither is known."""
    found = []
    try:
        with open("/proc/meminfo") as meminfo:
            found += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: the limit and what the group already uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


def tensor_bytes(value, seen: set | None = None) -> int:
    """The bytes of every tensor in ``value`` (dataclasses, mappings and sequences walked): what a trial's worker
    holds of the stage's shared inputs once Ray hands it a copy."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(tensor_bytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in value)
    return 0


def measure(stage: Stage, config: dict, task: TaskData, inputs, settings: TrainSettings, cpus_per_node: int,
            gpus_per_node: float, trials: int) -> Packing:
    """Time ``stage``'s trial at ``config`` here (on a GPU when the node has one) and choose the packing."""
    threads_before = torch.get_num_threads()
    try:
        if gpus_per_node > 0 and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            step = step_seconds(stage, config, task, inputs, settings, default_threads(cpus_per_node), "cuda")
            peak = torch.cuda.max_memory_allocated()
            total = torch.cuda.get_device_properties(0).total_memory
            return choose_gpu(peak, total, gpus_per_node, cpus_per_node, step, trials)
        before = resident_bytes()
        started = time.perf_counter()
        one = step_seconds(stage, config, task, inputs, settings, 1)
        every = step_seconds(stage, config, task, inputs, settings, cpus_per_node) if cpus_per_node > 1 else one
        trained = max(0, resident_bytes() - before)  # glibc keeps a trial's freed heap (tuner.memory): its peak
        trial_steps = settings.epochs * math.ceil(len(task.train) / settings.batch_size)
        packing = choose_cpu(one, every, cpus_per_node, WORKER_BYTES + tensor_bytes(inputs) + trained,
                             available_bytes(), trials, trial_steps)
        return dataclasses.replace(packing, reason=f"{packing.reason}; measured in "
                                                   f"{time.perf_counter() - started:.0f} s")
    finally:
        torch.set_num_threads(threads_before)
        release_memory()


def check_resources(settings: RunSettings, cpus_per_node: int, gpus_per_node: float) -> None:
    """A trial asking for more than any node has would wait forever: refuse it."""
    gpus = settings.gpus_per_trial or 0.0
    if settings.cpus_per_trial > cpus_per_node or gpus > gpus_per_node:
        raise TunerError(f"--cpus-per-trial {settings.cpus_per_trial:g} / --gpus-per-trial "
                         f"{gpus:g}: no Ray node has that many ({cpus_per_node} CPUs, "
                         f"{gpus_per_node:g} GPUs at most); trials would wait forever")


def for_stage(stage: Stage, settings: RunSettings, space: SearchSpace, inputs, shapes: list[dict] | None,
              task: TaskData, trial_settings: TrainSettings, cluster, resume: bool) -> Packing:
    """What each trial of ``stage`` gets on ``cluster`` (a ``tuner.search.ClusterInfo``): on --resume, what the
    search started with (``tuner.resume.check_resumable`` refused flags that differ); the flags' CPUs and GPUs when
    given; a whole node where nothing can be timed here (one trial, one core, a joined cluster, GPUs the driver
    cannot reach) or the timing fails; else measured at ``space``'s typical config."""
    record_file = settings.stage_dir(stage.name) / SEARCH_SETTINGS
    started = read_search_settings(record_file).get("packing") if resume else None
    if started is not None:
        return recorded(started, str(record_file))
    gpus = settings.gpus_per_trial
    cpus, node_gpus = cluster.cpus_per_node, cluster.gpus_per_node
    if settings.cpus_per_trial or gpus:
        return given(settings.cpus_per_trial, gpus if gpus is not None else (1.0 if node_gpus else 0.0),
                     cpus, node_gpus)
    on_gpu = node_gpus > 0 and gpus is None  # --gpus-per-trial 0: the CPUs' packing, measured
    whole = given(0, 1.0 if on_gpu else 0.0, cpus, node_gpus)
    if resume:
        return dataclasses.replace(whole, reason="as searches ran before tuner chose the packing")
    unmeasured = ("a single trial" if settings.trials < 2 else "one core" if cpus < 2 and not on_gpu else
                  "a joined cluster (its nodes' steps are not timed here: --cpus-per-trial packs them)"
                  if settings.address else
                  "the nodes' GPUs are not this driver's to time a trial on" if on_gpu and not torch.cuda.is_available()
                  else None)
    if unmeasured:
        return dataclasses.replace(whole, reason=unmeasured)
    config = typical_config(stage, space, inputs, shapes)
    try:
        return measure(stage, config, task, inputs, trial_settings, cpus, node_gpus if on_gpu else 0.0,
                       settings.trials)
    except Exception as exc:  # noqa: BLE001 - a trial that fails here fails in the search too, where Tune records it
        log.warning("stage %s: timing a trial failed (%s); one trial per node", stage.name, first_line(exc))
        return dataclasses.replace(whole, reason=f"timing a trial failed: {first_line(exc)}")
