"""Search spaces as data: ``search_spaces/<stage>.yaml`` read safely and validated into plain ``Param`` records.

tuner/search/searcher.py maps the records to Optuna distributions; nothing here imports Ray or Optuna.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuner.config import SHAPE
from tuner.errors import TunerError

PARAM_TYPES = ("loguniform", "uniform", "int", "choice")
KEYS_BY_TYPE = {
    "loguniform": {"type", "low", "high"},
    "uniform": {"type", "low", "high"},
    "int": {"type", "low", "high"},
    "choice": {"type", "values"},
}
# Hard limits a value must respect whatever the YAML says.
BOUNDS = {"weight_decay": (0.0, 1.0), "warmup_ratio": (0.0, 1.0), "alpha": (0.0, 1.0),
          "temperature": (1e-6, math.inf), "learning_rate": (1e-300, math.inf), "factor_dim": (1, math.inf),
          "num_layers": (1, math.inf), "beta": (0.0, math.inf), "lr_depth_power": (0.0, 2.0),
          "layer_reach": (0.0, 1.0)}


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    values: tuple | None = None

    def grid(self) -> tuple:
        """Every value a discrete parameter takes (``int``: low to high; ``choice``: its values)."""
        if self.type == "choice":
            return self.values
        if self.type == "int":
            return tuple(range(int(self.low), int(self.high) + 1))
        raise ValueError(f"{self.name}: a {self.type} range has no finite grid")


@dataclass(frozen=True)
class SearchSpace:
    stage: str
    path: Path
    params: tuple[Param, ...]
    sha256: str

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


# PyYAML follows YAML 1.1, where a float needs a dot: ``1e-4`` arrives as a string. Numbers written that way are
# taken as numbers; any other string stays an error.
EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_number(value):
    return float(value) if isinstance(value, str) and EXPONENT.fullmatch(value.strip()) else value


def _number(value, where: str, integer: bool = False) -> float:
    value = _yaml_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TunerError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise TunerError(f"{where}: expected a finite number, got {value!r}")
    if integer and int(value) != value:
        raise TunerError(f"{where}: expected an integer, got {value!r}")
    return int(value) if integer else float(value)


def _check_bounds(name: str, values, where: str) -> None:
    low, high = BOUNDS.get(name, (-math.inf, math.inf))
    for value in map(_yaml_number, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TunerError(f"{where}: expected numbers, got {value!r}")
        if not math.isfinite(value):
            raise TunerError(f"{where}: expected finite numbers, got {value!r}")
        if not low <= value <= high:
            raise TunerError(f"{where}: {value!r} outside the allowed range [{low}, {high}] for {name}")


def _parse_param(name: str, spec, where: str) -> Param:
    if not isinstance(spec, dict):
        raise TunerError(f"{where}: expected a mapping with 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise TunerError(f"{where}.type: {kind!r} is not one of {', '.join(PARAM_TYPES)}")
    unknown = sorted(map(str, set(spec) - KEYS_BY_TYPE[kind]))
    if unknown:
        raise TunerError(f"{where}: unknown key {unknown[0]!r} for type {kind}")
    missing = sorted(map(str, KEYS_BY_TYPE[kind] - set(spec)))
    if missing:
        raise TunerError(f"{where}: missing key {missing[0]!r}")
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise TunerError(f"{where}.values: expected a non-empty list, got {values!r}")
        _check_bounds(name, values, f"{where}.values")
        return Param(name, kind, values=tuple(map(_yaml_number, values)))
    integer = kind == "int"
    low = _number(spec["low"], f"{where}.low", integer)
    high = _number(spec["high"], f"{where}.high", integer)
    if low > high:
        raise TunerError(f"{where}: low ({low}) > high ({high})")
    if kind == "loguniform" and low <= 0:
        raise TunerError(f"{where}.low: a log scale needs low > 0 (got {low})")
    _check_bounds(name, (low, high), where)
    return Param(name, kind, low=low, high=high)


def check_config(stage, config: dict, where: str) -> dict:
    """A config to train ``stage`` with once (``tuner.retrain``): every hyperparameter it requires, none it does not
    know, each a finite number inside its hard limits; ``where`` names the mapping in errors."""
    if not isinstance(config, dict):
        raise TunerError(f"{where}: expected a mapping of hyperparameters, got {type(config).__name__}")
    if stage.sized_by:  # a front search's shape label: its size hyperparameters are in the config as well
        config = {name: value for name, value in config.items() if name != SHAPE}
    for name, value in config.items():
        _check_known(stage, name, where)
        _check_bounds(name, [value], f"{where}.{name}")
    _check_required(stage, config, where)
    return {name: _yaml_number(value) for name, value in config.items()}


def _check_known(stage, name: str, where: str) -> None:
    """``name`` is a hyperparameter ``stage`` reads; ``where`` names the mapping (a space's params, a config)."""
    if name not in stage.hyperparameters():
        raise TunerError(f"{where}.{name}: unknown key for stage {stage.name} "
                         f"(known: {', '.join(stage.hyperparameters())})")


def _check_required(stage, names, where: str) -> None:
    missing = [name for name in stage.required if name not in names]
    if missing:
        raise TunerError(f"{where}.{missing[0]} is required for stage {stage.name}")


def parse_space(stage, document, path: Path) -> SearchSpace:
    """Validate a loaded YAML document against ``stage`` (a ``tuner.registry.Stage``: the hyperparameters it
    requires and those it reads); every problem names the file and key."""
    if not isinstance(document, dict) or set(document) != {"params"} or not isinstance(document["params"], dict):
        keys = sorted(map(str, document)) if isinstance(document, dict) else type(document).__name__
        raise TunerError(f"{path}: expected one top-level key 'params' mapping names to ranges (got {keys})")
    params = []
    for name, spec in document["params"].items():
        _check_known(stage, name, f"{path}: params")
        params.append(_parse_param(name, spec, f"{path}: params.{name}"))
    _check_required(stage, document["params"], f"{path}: params")
    digest = hashlib.sha256(yaml.safe_dump(document, sort_keys=True).encode()).hexdigest()
    return SearchSpace(stage.name, Path(path), tuple(params), digest)


def read_yaml(path: Path):
    """Load YAML with the safe loader; syntax errors and tags such as !!python/object become a TunerError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TunerError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise TunerError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise TunerError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise TunerError(f"{path}{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise TunerError(f"{path}: invalid YAML: {exc}") from None


def load_space(stage, path: Path) -> SearchSpace:
    return parse_space(stage, read_yaml(path), Path(path))


EDGE_SHARE = 0.05  # a value within 5% of a range's width (on its scale) from an end is at that end


def edges(space: SearchSpace, config: dict, skip: tuple = ()) -> list[str]:
    """One line per numeric hyperparameter of ``config`` (but ``skip``) at an end of its range in ``space``,
    naming the range to widen: a best config there suggests the best values lie outside the range."""
    found = []
    for p in space.params:
        value = config.get(p.name)
        if p.type == "choice" or value is None or p.low == p.high or p.name in skip:
            continue
        scale = math.log if p.type == "loguniform" else float
        low, high, here = scale(p.low), scale(p.high), scale(value)
        floor, ceiling = BOUNDS.get(p.name, (-math.inf, math.inf))
        for end, distance in (("low", here - low), ("high", high - here)):
            if (end == "low" and p.low <= floor) or (end == "high" and p.high >= ceiling):
                continue  # the range already reaches the hard limit there (a weight decay of 0): nothing to widen
            if distance <= EDGE_SHARE * (high - low):
                found.append(f"{p.name} {value:.3g} is at the {end} end of its range [{p.low:g}, {p.high:g}] in "
                             f"{space.path}: widen params.{p.name}.{end}")
    return found


def shared_point(space: SearchSpace, config: dict) -> dict:
    """The values of ``config`` that ``space`` searches and whose ranges hold them: another stage's best config
    as a (partial) first trial of this one's search."""
    point = {}
    for p in space.params:
        value = config.get(p.name)
        if value is None or isinstance(value, bool):
            continue
        if p.type == "choice":
            if value in p.values:
                point[p.name] = value
        elif isinstance(value, (int, float)) and p.low <= value <= p.high and (p.type != "int" or value == int(value)):
            point[p.name] = int(value) if p.type == "int" else float(value)
    return point


def value_ranges(space: SearchSpace | None = None, config: dict | None = None) -> dict:
    """name -> (lowest, highest) value the trials may take: from a search space's ranges, or one config's values."""
    if space is not None:
        return {p.name: (min(p.values), max(p.values)) if p.type == "choice" else (p.low, p.high)
                for p in space.params}
    return {k: (v, v) for k, v in (config or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
