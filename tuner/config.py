"""Typed configuration at the edge: profiles and run settings as frozen dataclasses, the one home of defaults.

CLI flags and YAML become these objects once; everything below them takes plain values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from tuner.errors import TunerError

STAGES = ("teacher", "factorized", "student")
SPLITS = ("report", "official")
PROFILES = ("auto", "gpu", "cpu", "smoke")
# auto: bf16 autocast where the device computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX),
# float32 elsewhere; fp32 and bf16 force one. Weights, optimizer state and checkpoints stay float32.
PRECISIONS = ("auto", "fp32", "bf16")
BATCH_ORDERS = ("random", "length")  # training batches: shuffled, or length-grouped (tuner.data)
IGNORE_INDEX = -100
METRIC = "val_f1"  # the metric every search maximises, declared once
MODE = "max"
SEARCH_SPACE_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


@dataclass(frozen=True)
class Profile:
    """What a search trains on and for how long; every field can be overridden by a CLI flag."""

    name: str
    model: str  # Hub id, local folder, "minilm" (packaged MiniLM-L6-H384) or "tiny" (random 2-layer BERT)
    epochs: int
    batch_size: int
    max_length: int  # sub-tokens per sentence, [CLS] and [SEP] included
    train_sentences: int | None  # None: the whole training split
    eval_sentences: int | None  # validation sentences scored each epoch; None: all
    test_sentences: int | None  # held-out sentences scored once for the best model; None: all
    max_params: int  # the student's parameter budget
    eval_batch_size: int = 64
    # False: only a word's first sub-token carries its label (the HF recipe; +1.1 F1 points over 3 seeds, see
    # results/benchmarks.md); True: continuation sub-tokens get the word's I- label (the report's alignment)
    label_all_subtokens: bool = False
    space_dir: Path = SEARCH_SPACE_DIR  # holds <stage>.yaml for each stage
    student_epochs: int | None = None  # None: ``epochs``; a student epoch costs a fraction of a teacher's
    precision: str = "auto"  # one of PRECISIONS: the trials' forward passes (training and validation)
    # Every stage's training batches (one of BATCH_ORDERS): "random" (the HF Trainer's order, trained unpadded) or
    # "length" (length-grouped, padded per batch: faster, but less F1 for the same config: -0.9 points for the
    # student and -0.65 for the teacher over 3 seeds each). See results/benchmarks.md.
    batches: str = "random"

    def epochs_for(self, stage: str) -> int:
        return self.student_epochs if stage == "student" and self.student_epochs else self.epochs

    def __post_init__(self):
        problems = []
        for name in ("epochs", "batch_size", "max_length", "eval_batch_size", "max_params", "student_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("train_sentences", "eval_sentences", "test_sentences"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 (got {value})")
        if self.max_length < 8:
            problems.append(f"max_length must be >= 8 (got {self.max_length})")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.batches not in BATCH_ORDERS:
            problems.append(f"batches must be one of {', '.join(BATCH_ORDERS)} (got {self.batches!r})")
        if problems:
            raise TunerError(f"profile {self.name}: " + "; ".join(problems))


PROFILE_DEFAULTS = {
    # The report's setting: bert-base-cased from the Hub, all the data, 3 epochs.
    "gpu": Profile("gpu", model="bert-base-cased", epochs=3, batch_size=32, max_length=192, train_sentences=None,
                   eval_sentences=None, test_sentences=None, max_params=20_000_000, eval_batch_size=128),
    # The packaged MiniLM and a subset sized so that a 4-trial teacher search takes 10-15 minutes on 2 cores.
    "cpu": Profile("cpu", model="minilm", epochs=3, batch_size=16, max_length=128, train_sentences=3000,
                   eval_sentences=500, test_sentences=None, max_params=6_800_000,
                   student_epochs=10),  # the 3-layer student trains 2.5x faster; at 6 epochs it was still improving
    # A tiny random BERT and a few dozen sentences: seconds. The tests use it.
    "smoke": Profile("smoke", model="tiny", epochs=2, batch_size=8, max_length=48, train_sentences=48,
                     eval_sentences=24, test_sentences=24, max_params=300_000, eval_batch_size=32,
                     space_dir=SEARCH_SPACE_DIR / "smoke"),  # E choices sized for the 32-wide tiny model
}


def resolve_profile(name: str, cuda_available: bool, **overrides) -> Profile:
    """The named profile (``auto``: ``gpu`` with CUDA, else ``cpu``) with the non-None overrides applied."""
    if name not in PROFILES:
        raise TunerError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    if name == "auto":
        name = "gpu" if cuda_available else "cpu"
    base = PROFILE_DEFAULTS[name]
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class RunSettings:
    """One invocation of ``tuner.run``: which stages, how many trials, where data and results live."""

    stages: tuple[str, ...]
    trials: int
    profile: Profile
    data: str = "conll2003"
    split: str = "report"
    seed: int = 0
    results_dir: Path = Path("results")
    cpus_per_trial: float = 0.0  # 0: all the CPUs Ray sees, one trial at a time
    gpus_per_trial: float = 0.0
    address: str | None = None
    teacher: Path | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    dashboard_host: str = "127.0.0.1"
    keep_dashboard: bool = False
    max_failures: int = 0
    process_per_trial: bool = False  # True: Ray's default, a fresh worker process per trial

    def __post_init__(self):
        problems = []
        for stage in self.stages:
            if stage not in STAGES:
                problems.append(f"unknown stage {stage!r} (choose teacher, factorized, student or all)")
        if self.trials < 1:
            problems.append(f"--trials must be >= 1 (got {self.trials})")
        if self.split not in SPLITS:
            problems.append(f"--split must be one of {', '.join(SPLITS)} (got {self.split!r})")
        if self.cpus_per_trial < 0 or self.gpus_per_trial < 0:
            problems.append("--cpus-per-trial and --gpus-per-trial must be >= 0")
        if self.max_failures < 0:
            problems.append(f"--max-failures must be >= 0 (got {self.max_failures})")
        if self.resume and self.overwrite:
            problems.append("--resume and --overwrite exclude each other")
        if problems:
            raise TunerError("; ".join(problems))

    def space_file(self, stage: str) -> Path:
        return Path(self.profile.space_dir) / f"{stage}.yaml"

    def stage_dir(self, stage: str) -> Path:
        return Path(self.results_dir) / stage


@dataclass(frozen=True)
class TrainSettings:
    """The fixed, non-searched settings every trial of a stage shares (plain values for the stage code)."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    seed: int
    threads: int
    device: str = "cpu"  # trials pick their own device where they run
    precision: str = "auto"  # resolved against ``device`` by tuner.training.autocast
    batch_order: str = "random"  # one of BATCH_ORDERS: random (trained unpadded) or length-grouped batches


def train_settings(profile: Profile, stage: str, seed: int, threads: int, device: str = "cpu") -> TrainSettings:
    """The fixed settings of every trial of ``stage`` (and of a retrain of its best config)."""
    return TrainSettings(epochs=profile.epochs_for(stage), batch_size=profile.batch_size,
                         eval_batch_size=profile.eval_batch_size, seed=seed, threads=threads, device=device,
                         precision=profile.precision, batch_order=profile.batches)


def default_threads(cpus_per_trial: float) -> int:
    """Torch threads for one trial: its CPU share, at least one."""
    if cpus_per_trial > 0:
        return max(1, int(cpus_per_trial))  # a fractional share packs trials: one thread each
    return max(1, os.cpu_count() or 1)
