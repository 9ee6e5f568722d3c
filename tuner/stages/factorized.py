"""Factorized stage: the teacher with its V x H word embedding replaced by V x E and E x H matrices
(ALBERT-style), initialised from the truncated SVD of the teacher's embedding, then fine-tuned."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tuner.config import TrainSettings
from tuner.data import TaskData
from tuner.models import (ModelState, embedding_svd, factorize, model_from_state, parameters_from_parts,
                          shape_limits, size_parts)
from tuner.registry import Stage, StageContext
from tuner.training import EpochResult, fit, set_seed


@dataclass
class FactorizedInputs:
    """The teacher and the SVD of its embedding, computed once per search and truncated per trial."""

    teacher: ModelState
    svd: tuple
    size_parts: tuple  # tuner.models.size_parts of the teacher: a rank's parameters without building the model
    num_layers: int


def prepare(context: StageContext) -> FactorizedInputs:
    teacher = context.teacher
    return FactorizedInputs(ModelState.of(teacher), embedding_svd(teacher.get_input_embeddings().weight),
                            size_parts(teacher), teacher.config.num_hidden_layers)


def train(hparams: dict, task: TaskData, inputs: FactorizedInputs, settings: TrainSettings,
          resume: Path | None = None) -> Iterator[EpochResult]:
    set_seed(settings.seed)
    model = factorize(model_from_state(inputs.teacher), int(hparams["factor_dim"]), inputs.svd)
    yield from fit(model, hparams, task, settings, resume=resume)


def rank_size(inputs: FactorizedInputs, hparams: dict) -> int:
    """The factorized model's parameters at rank E: every teacher layer, a V x E and an E x H matrix."""
    return parameters_from_parts(inputs.size_parts, inputs.num_layers, int(hparams["factor_dim"]))


STAGE = Stage(name="factorized", order=20,
              description="teacher with SVD-factorized word embeddings (E={factor_dim}), fine-tuned",
              required=("learning_rate", "weight_decay", "warmup_ratio", "factor_dim"), optional=(),
              prepare=prepare, train=train, needs_teacher=True, sized_by=("factor_dim",), size=rank_size,
              limits=shape_limits)
