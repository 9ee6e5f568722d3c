"""Teacher stage: fine-tune the pretrained encoder (bert-base-cased, or the packaged MiniLM) for NER."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from tuner.config import TrainSettings
from tuner.data import TaskData
from tuner.models import ModelState, initial_token_classifier, model_from_state
from tuner.registry import Stage, StageContext
from tuner.training import EpochResult, fit, set_seed


def prepare(context: StageContext) -> ModelState:
    """The pretrained encoder with a classifier head seeded by the run's seed, shared by every trial."""
    model = initial_token_classifier(context.profile.model, context.task.labels, context.seed, context.vocab_size)
    return ModelState.of(model)


def train(hparams: dict, task: TaskData, pretrained: ModelState, settings: TrainSettings,
          resume: Path | None = None) -> Iterator[EpochResult]:
    """One trial: the pretrained encoder with its seeded head, trained with cross-entropy on aligned labels."""
    set_seed(settings.seed)
    model = model_from_state(pretrained)
    yield from fit(model, hparams, task, settings, resume=resume)


STAGE = Stage(name="teacher", order=10, description="pretrained encoder fine-tuned for NER",
              required=("learning_rate", "weight_decay", "warmup_ratio"), optional=(),
              prepare=prepare, train=train, needs_teacher=False, trains_teacher=True)
