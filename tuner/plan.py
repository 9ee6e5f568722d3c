"""What a stage's search samples: the hyperparameters it searches (with F1 alone, the size ones left at the
stage's default), and in a front search every combination of the size hyperparameters inside the budget, refused
before any trial where the space cannot give one."""

from __future__ import annotations

import dataclasses
import itertools

from tuner import registry
from tuner.config import searches_front
from tuner.errors import TunerError
from tuner.registry import Stage
from tuner.spaces import SearchSpace


def sized_params(stage: Stage, space: SearchSpace, objectives: tuple) -> list:
    """The size hyperparameters ``space`` searches, for a search with size among its objectives; refuses a stage
    of fixed size, a space that searches none, or one whose size ranges are not discrete."""
    flag = f"--objectives {','.join(objectives)}"
    if not stage.sized_by:
        sized = ", ".join(s.name for s in registry.stages() if s.sized_by)
        raise TunerError(f"{flag}: stage {stage.name} has a fixed size (size is an objective of {sized} only)")
    searched = [p for p in space.params if p.name in stage.sized_by]
    if not searched:
        raise TunerError(f"{space.path}: searches none of {', '.join(stage.sized_by)}, so {flag} has no size to "
                         "trade for F1")
    for p in searched:
        if p.type not in ("int", "choice"):
            raise TunerError(f"{space.path}: params.{p.name}: {flag} needs an int or choice range, got {p.type}")
    return searched


def searched_params(stage: Stage, space: SearchSpace, objectives: tuple) -> tuple:
    """The hyperparameters a search of ``objectives`` samples: all of the space's with size among them; with F1
    alone, all but those left at the stage's default (``Stage.front_only``, and size hyperparameters it can do
    without: it keeps the deepest, then widest, model under the budget)."""
    if searches_front(objectives):
        return space.params
    return tuple(p for p in single_objective_space(stage, space).params
                 if p.name not in stage.sized_by or p.name in stage.required)


def check_shapes(stage: Stage, space: SearchSpace, objectives: tuple, config) -> None:
    """Refuse a space whose searched size hyperparameters reach shapes the teacher (of ``config``) cannot give, such
    as more layers than it has, before any trial is sampled into one."""
    values = {p.name: p.grid() if p.type in ("int", "choice") else (p.low, p.high)
              for p in searched_params(stage, space, objectives)}
    stage.check_limits(config, values, f"{space.path}: params.")


def search_plan(stage: Stage, space: SearchSpace, inputs, objectives: tuple) -> tuple[SearchSpace, list | None]:
    """What the search samples: with size among the objectives, the space without its size hyperparameters and
    every combination of them inside the stage's budget (each to be one choice of a single categorical, so no
    trial over the budget is ever sampled); with F1 alone, ``searched_params``."""
    if not searches_front(objectives):
        return dataclasses.replace(space, params=searched_params(stage, space, objectives)), None
    searched = sized_params(stage, space, objectives)
    budget = stage.budget(inputs)
    shapes = [dict(zip((p.name for p in searched), values))
              for values in itertools.product(*(p.grid() for p in searched))]
    feasible = [shape for shape in shapes if budget is None or stage.size(inputs, shape) <= budget]
    if not feasible:
        smallest = min(stage.size(inputs, shape) for shape in shapes)
        raise TunerError(f"--max-params {budget}: no {stage.name} in {space.path} fits (the smallest has "
                         f"{smallest} parameters)")
    rest = tuple(p for p in space.params if p.name not in stage.sized_by)
    return dataclasses.replace(space, params=rest), feasible


def single_objective_space(stage: Stage, space: SearchSpace) -> SearchSpace:
    """``space`` without the hyperparameters a search of F1 alone leaves at their default (``Stage.front_only``)."""
    return dataclasses.replace(space, params=tuple(p for p in space.params if p.name not in stage.front_only))
