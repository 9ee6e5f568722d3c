"""Teacher stage: fine-tune the pretrained encoder (bert-base-cased, or the packaged MiniLM) for NER."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from tuner.config import TrainSettings
from tuner.data import TaskData
from tuner.models import ModelState, model_from_state
from tuner.training import EpochResult, fit, set_seed


def train(hparams: dict, task: TaskData, pretrained: ModelState, settings: TrainSettings,
          resume: Path | None = None) -> Iterator[EpochResult]:
    """One trial: the pretrained encoder with its seeded head, trained with cross-entropy on aligned labels."""
    set_seed(settings.seed)
    model = model_from_state(pretrained)
    yield from fit(model, hparams, task, settings, resume=resume)
