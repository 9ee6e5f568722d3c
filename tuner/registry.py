"""The stage registry: each ``tuner/stages/<name>.py`` declares its stage once, as a module-level ``STAGE``.

Everything else (the CLI's choices, the search spaces' keys, the pipeline's inputs, the exports' descriptions)
reads a stage from its ``Stage`` record; nothing matches stage names as strings. Adding a stage is one file in
``tuner/stages/`` plus its ``search_spaces/<name>.yaml``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from torch import nn

from tuner.config import Profile, TrainSettings
from tuner.data import TaskData
from tuner.errors import TunerError


@dataclass(frozen=True)
class StageContext:
    """What a stage's ``prepare`` may read, built once on the driver."""

    profile: Profile
    task: TaskData
    seed: int
    teacher: nn.Module | None  # the checked teacher; None for a stage that does not need one
    vocab_size: int
    device: str
    # the values the trials may take, name -> (lowest, highest): a search's space, or a retrain's one config;
    # lets ``prepare`` skip work no trial will read
    ranges: dict = dataclasses.field(default_factory=dict)


# train(hparams, task, inputs, settings, resume) -> one EpochResult per epoch (tuner.training.fit yields them)
TrainFn = Callable[[dict, TaskData, object, TrainSettings, "Path | None"], Iterator]


def profile_epochs(profile: Profile) -> int:
    return profile.epochs


def no_budget(inputs) -> None:
    return None


def accept(profile: Profile, teacher: nn.Module | None, hyperparameters: dict | None = None) -> None:
    return None


def no_limits(config) -> dict:
    return {}


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, as everything outside its module sees it."""

    name: str
    order: int  # position in ``--stage all``: lower runs first
    description: str  # summary.md's description, formatted with the stage's result record ({factor_dim} ...)
    required: tuple[str, ...]  # hyperparameters its search space must have
    optional: tuple[str, ...]  # hyperparameters it reads when its space has them
    prepare: Callable[[StageContext], object]  # every trial's shared inputs, computed once on the driver
    train: TrainFn  # one trial: plain PyTorch, one EpochResult per epoch
    needs_teacher: bool  # reads the teacher (``--teacher`` or the teacher stage's best model)
    trains_teacher: bool = False  # its best model is the teacher later stages read
    epochs: Callable[[Profile], int] = profile_epochs  # epochs of each trial under a profile
    # Size as an objective (--objectives f1,params): the hyperparameters that set the model's size (searched only
    # then), the parameter count of a config before training, and the most parameters a trial may have
    sized_by: tuple[str, ...] = ()
    size: Callable[[object, dict], int] | None = None  # (inputs, hyperparameters) -> parameters
    budget: Callable[[object], int | None] = no_budget  # inputs -> the parameter budget, None: no budget
    # (teacher, profile) -> what ``size`` and ``budget`` read of the inputs, without ``prepare``'s work (a front's
    # budget is checked against its space before Ray starts or the teacher's outputs are computed); None: unchecked
    sizing: Callable[[nn.Module, Profile], object] | None = None
    # hyperparameters its space may hold that are searched only with size among the objectives (they pay off at
    # the front's small end); with F1 alone they keep the stage's default
    front_only: tuple[str, ...] = ()
    # the teacher's config -> {size hyperparameter: (low, high, why)}: the shapes that teacher can give
    limits: Callable[[object], dict] = no_limits
    # refuse, before any work, what cannot run: (profile, teacher) a budget no config meets; with a config's
    # hyperparameters too (a retrain), that config (TunerError, one line, naming the entry's key at fault:
    # ``hyperparameters: ...`` or ``training.max_params: ...``)
    check: Callable[..., None] = accept
    # how a model this stage trained is fine-tuned further (quantization-aware training before int8): (context
    # with the teacher, the model, its hyperparameters, batches) -> (a tuner.training.LossFn, the learning rate
    # it trained at); None: token cross-entropy at its searched learning rate, no teacher read
    fine_tuning: Callable[[StageContext, nn.Module, dict, str], tuple] | None = None

    def hyperparameters(self) -> tuple[str, ...]:
        return self.required + self.optional

    def check_limits(self, config, values: dict, where: str) -> None:
        """Refuse a size hyperparameter value the teacher (of ``config``) cannot give, such as more layers than it
        has: ``values`` maps names to the values a space or a config may take, ``where`` prefixes the name."""
        for name, (low, high, why) in self.limits(config).items():
            outside = [v for v in values.get(name, ()) if not low <= v <= high]
            if outside:
                raise TunerError(f"{where}{name}: {outside[0]:g} is outside [{low}, {high}] ({why})")


STAGE_PACKAGE = "tuner.stages"


@functools.cache
def stages() -> tuple[Stage, ...]:
    """Every ``STAGE`` declared by a module of ``tuner.stages``, in pipeline order (found once, at first use)."""
    package = importlib.import_module(STAGE_PACKAGE)
    found = []
    for module in pkgutil.iter_modules(package.__path__):
        stage = getattr(importlib.import_module(f"{STAGE_PACKAGE}.{module.name}"), "STAGE", None)
        if isinstance(stage, Stage):
            found.append(stage)
    return tuple(sorted(found, key=lambda s: s.order))


def names() -> tuple[str, ...]:
    return tuple(stage.name for stage in stages())


def by_name(name: str) -> Stage:
    return {stage.name: stage for stage in stages()}[name]


def teacher_stage() -> Stage:
    """The stage whose best model is the teacher of the others."""
    (stage,) = [s for s in stages() if s.trains_teacher]
    return stage
