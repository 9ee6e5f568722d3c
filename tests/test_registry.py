"""The stage registry: the three stages declare themselves once, and a new stage needs one module and a YAML. A
toy stage defined here (the teacher's classifier head retrained on a frozen encoder) runs through a smoke search
without any other file knowing it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write
from tuner import registry
from tuner.config import RunSettings, TrainSettings, resolve_profile
from tuner.models import ModelState, initial_token_classifier, load_model, model_from_state, save_model
from tuner.registry import Stage, StageContext
from tuner.training import fit, set_seed


def prepare_head(context: StageContext) -> ModelState:
    return ModelState.of(context.teacher)


def train_head(hparams: dict, task, teacher: ModelState, settings: TrainSettings, resume: Path | None = None):
    """One trial: the teacher with every encoder weight frozen, its classifier head trained."""
    set_seed(settings.seed)
    model = model_from_state(teacher)
    for parameter in model.base_model.parameters():
        parameter.requires_grad_(False)
    yield from fit(model, hparams, task, settings, resume=resume)


TOY = Stage(name="head", order=15, description="the teacher's head retrained ({parameters} parameters)",
            required=("learning_rate",), optional=("weight_decay", "warmup_ratio"), prepare=prepare_head,
            train=train_head, needs_teacher=True)
TOY_SPACE = """params:
  learning_rate: {type: loguniform, low: 1.0e-3, high: 1.0e-2}  # the head alone takes large steps
  weight_decay: {type: uniform, low: 0.0, high: 0.0}            # none
  warmup_ratio: {type: uniform, low: 0.0, high: 0.1}            # share of steps warming up
"""


def test_the_three_stages_declare_themselves_in_pipeline_order():
    stages = registry.stages()
    assert [s.name for s in stages] == ["teacher", "factorized", "student"]
    assert registry.teacher_stage().name == "teacher" and not registry.teacher_stage().needs_teacher
    assert all(s.needs_teacher for s in stages[1:])
    profile = resolve_profile("cpu", False)
    assert [s.epochs(profile) for s in stages] == [profile.epochs, profile.epochs, profile.student_epochs]


def test_a_stage_outside_the_registry_needs_no_other_file(tmp_path):
    from tuner.spaces import load_space

    space = load_space(TOY, write(tmp_path / "head.yaml", TOY_SPACE))
    assert space.stage == "head" and space.names() == ("learning_rate", "weight_decay", "warmup_ratio")
    assert "head" not in registry.names()  # defining it here registered nothing globally


@pytest.mark.slow
def test_a_toy_stage_runs_through_a_smoke_search(tmp_path, tokenizer, conll_dir):
    from ray import cloudpickle

    from tuner import pipeline

    # Ray's workers cannot import a pytest module by name: ship this module's functions by value instead (a
    # stage module in tuner/stages/ is imported by name, as the three stages are)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    teacher = initial_token_classifier("tiny", ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC",
                                                "B-MISC", "I-MISC"], 0, len(tokenizer))
    save_model(teacher, tmp_path / "teacher", tokenizer)
    spaces = tmp_path / "spaces"
    write(spaces / "head.yaml", TOY_SPACE)
    results = tmp_path / "results"
    settings = RunSettings(stages=(TOY,), trials=2, profile=resolve_profile("smoke", False, space_dir=spaces),
                           data=str(conll_dir), results_dir=results, teacher=tmp_path / "teacher", quiet=True)
    records = pipeline.run(settings, echo=lambda *a: None)

    record = json.loads((results / "head" / "best" / "result.json").read_text())
    assert record["stage"] == "head" and record["trials"] == 2 and record["profile"] == "smoke"
    assert set(record["hyperparameters"]) == {"learning_rate", "weight_decay", "warmup_ratio"}
    assert 1e-3 <= record["hyperparameters"]["learning_rate"] <= 1e-2 and record["hyperparameters"]["weight_decay"] == 0
    assert 0 <= record["val_f1"] <= 1 and 0 <= record["test_f1"] <= 1
    assert records["head"]["val_f1"] == record["val_f1"] and Path(record["checkpoint"]) == results / "head" / "best"
    best = load_model(results / "head" / "best")
    frozen = {name: value for name, value in teacher.state_dict().items() if not name.startswith("classifier")}
    for name, value in best.state_dict().items():  # the stage's own train ran: only the head moved
        if name in frozen:
            assert value.equal(frozen[name]), name
    assert not best.classifier.weight.equal(teacher.classifier.weight)
    exported = yaml.safe_load((results / "best_configs.yaml").read_text())
    assert list(exported) == ["head"] and exported["head"]["trials"] == 2
    assert f"the teacher's head retrained ({record['parameters']} parameters)" in (results / "summary.md").read_text()
