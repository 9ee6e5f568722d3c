"""Every search space in the repo validates; malformed ones are refused with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, write
from tuner import registry
from tuner.errors import TunerError
from tuner.spaces import load_space

TEACHER = registry.teacher_stage()

SPACES = sorted((ROOT / "search_spaces").rglob("*.yaml"))

GOOD = """params:
  learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-4}
  weight_decay: {type: uniform, low: 0.0, high: 0.1}
  warmup_ratio: {type: uniform, low: 0.0, high: 0.2}
"""


@pytest.mark.parametrize("path", SPACES, ids=lambda p: str(p.relative_to(ROOT)))
def test_repo_spaces_validate(path: Path):
    stage = registry.by_name(path.stem)
    space = load_space(stage, path)
    assert set(stage.required) <= set(space.names()) <= set(stage.hyperparameters())
    lines = path.read_text().splitlines()
    for name in space.names():  # each hyperparameter's line says what it is
        assert any(line.strip().startswith(f"{name}:") and "#" in line for line in lines), f"{path}: {name}"


def test_every_stage_has_a_space_in_each_profile_folder():
    names = {str(p.relative_to(ROOT / "search_spaces")) for p in SPACES}
    assert {f"{prefix}{stage}.yaml" for prefix in ("", "smoke/") for stage in registry.names()} <= names


def test_good_space(tmp_path):
    space = load_space(TEACHER, write(tmp_path / "t.yaml", GOOD))
    assert space.names() == ("learning_rate", "weight_decay", "warmup_ratio")
    assert [(p.type, p.low, p.high) for p in space.params][0] == ("loguniform", 1e-5, 1e-4)
    assert space.sha256 != load_space(TEACHER, write(tmp_path / "u.yaml", GOOD.replace("0.2}", "0.3}"))).sha256


def test_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-4 as a string; a space written that way means the number."""
    text = GOOD.replace("low: 1.0e-5", "low: 1e-5").replace("high: 1.0e-4", "high: 1E-4")
    text = text.replace("{type: uniform, low: 0.0, high: 0.1}", "{type: choice, values: [0, 1e-2]}")
    space = load_space(TEACHER, write(tmp_path / "t.yaml", text))
    assert [(p.low, p.high, p.values) for p in space.params][:2] == [(1e-5, 1e-4, None), (None, None, (0, 0.01))]


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("type: uniform, low: 0.0, high: 0.1", "type: uniform, low: 0.0, high: 0.1, step: 2"),
     "params.weight_decay: unknown key 'step'"),
    (GOOD + "  dropout: {type: uniform, low: 0.0, high: 0.1}\n", "params.dropout: unknown key for stage teacher"),
    (GOOD.replace("low: 0.0, high: 0.1", "low: 0.2, high: 0.1"), r"params.weight_decay: low \(0.2\) > high \(0.1\)"),
    (GOOD.replace("low: 1.0e-5", "low: 0.0"), "params.learning_rate.low: a log scale needs low > 0"),
    (GOOD.replace("low: 0.0, high: 0.1", "low: zero, high: 0.1"), "params.weight_decay.low: expected a number"),
    (GOOD.replace("low: 0.0, high: 0.1", "low: 1e-x, high: 0.1"), "params.weight_decay.low: expected a number"),
    (GOOD.replace("high: 1.0e-4", "high: .inf"), r"params.learning_rate.high: expected a finite number, got inf"),
    (GOOD.replace("{type: uniform, low: 0.0, high: 0.1}", "{type: choice, values: [0.0, .nan]}"),
     "params.weight_decay.values: expected finite numbers"),
    (GOOD.replace("{type: uniform, low: 0.0, high: 0.1}", "{type: choice, values: []}"),
     "params.weight_decay.values: expected a non-empty list"),
    (GOOD.replace("type: loguniform", "type: normal"), "params.learning_rate.type: 'normal' is not one of"),
    (GOOD.replace("  warmup_ratio: {type: uniform, low: 0.0, high: 0.2}\n", ""), "params.warmup_ratio is required"),
    (GOOD.replace("params:", "parameters:"), "expected one top-level key 'params'"),
    (GOOD.replace("high: 0.2}", "high: 0.2"), r"t\.yaml:\d+: invalid YAML"),
    ("!!python/object/apply:os.system ['echo pwned']\n", r"t\.yaml:1: invalid YAML"),
])
def test_bad_space_refused(tmp_path, text, message):
    with pytest.raises(TunerError, match=message):
        load_space(TEACHER, write(tmp_path / "t.yaml", text))


def test_missing_and_non_utf8_space(tmp_path):
    with pytest.raises(TunerError, match="no such file"):
        load_space(TEACHER, tmp_path / "nope.yaml")
    with pytest.raises(TunerError, match="not UTF-8"):
        load_space(TEACHER, write(tmp_path / "t.yaml", GOOD + "# é\n", encoding="utf-16"))


def test_a_best_value_at_a_range_end_is_named(tmp_path):
    from tuner.spaces import edges

    space = load_space(TEACHER, write(tmp_path / "t.yaml", GOOD.replace("low: 1.0e-5, high: 1.0e-4",
                                                                          "low: 5.0e-5, high: 5.0e-4")))
    found = edges(space, {"learning_rate": 4.9e-4, "weight_decay": 0.004, "warmup_ratio": 0.1})
    # 4.9e-4 is 0.9% of the log width from 5e-4; weight decay 0.004 is 4% of [0, 0.1] from 0, but 0 is as low as a
    # weight decay goes: nothing to widen there
    assert len(found) == 1
    assert found[0].startswith("learning_rate 0.00049 is at the high end of its range [5e-05, 0.0005]")
    assert found[0].endswith("widen params.learning_rate.high") and "t.yaml" in found[0]
    assert edges(space, {"learning_rate": 3e-4, "weight_decay": 0.099})[0].startswith("weight_decay 0.099 is at the high")
    assert edges(space, {"learning_rate": 3e-4, "weight_decay": 0.05, "warmup_ratio": 0.1}) == []
    assert edges(space, {"learning_rate": 4.9e-4}, skip=("learning_rate",)) == []


def test_a_retrained_config_is_checked_and_a_front_shape_label_dropped():
    """tuner.retrain's check: a front member's config carries the sampler's shape label beside num_layers and
    factor_dim (accepted and dropped for a sized stage); a stage of fixed size has no such key."""
    from tuner.spaces import check_config

    student = registry.by_name("student")
    config = {"learning_rate": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.1, "temperature": 2.0, "alpha": 0.5,
              "shape": "factor_dim=8,num_layers=1", "num_layers": 1, "factor_dim": 8}
    assert check_config(student, config, "c.yaml: student") == {k: v for k, v in config.items() if k != "shape"}
    teacher = {"learning_rate": "1e-4", "weight_decay": 0.0, "warmup_ratio": 0.1}
    assert check_config(TEACHER, teacher, "c.yaml: teacher")["learning_rate"] == 1e-4  # YAML 1.1's string
    with pytest.raises(TunerError, match=r"c\.yaml: teacher\.shape: unknown key for stage teacher"):
        check_config(TEACHER, dict(teacher, shape="x"), "c.yaml: teacher")


def test_layer_reach_outside_0_to_1_refused(tmp_path):
    """The student's ``layer_reach`` places its top kept layer between its own depth (0) and the teacher's top (1)."""
    student = registry.by_name("student")
    text = (GOOD + "  temperature: {type: uniform, low: 1.0, high: 8.0}\n"
            "  alpha: {type: uniform, low: 0.0, high: 0.9}\n"
            "  layer_reach: {type: choice, values: [0.0, 1.5]}\n")
    with pytest.raises(TunerError, match=r"params.layer_reach.values: 1.5 outside the allowed range \[0.0, 1.0\]"):
        load_space(student, write(tmp_path / "s.yaml", text))
    assert load_space(student, write(tmp_path / "s.yaml", text.replace("1.5", "1.0"))).names()[-1] == "layer_reach"
