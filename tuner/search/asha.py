"""The early-stopping scheduler of a search of F1 alone: Ray's ASHA, whose rung records survive ``--resume``
(``RememberingASHA``), and the mixin that keeps any scheduler's rung records in a file (``RungMemory``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

log = logging.getLogger(__name__)


class RungMemory:
    """What a scheduler recorded at its rungs, kept in a JSON file (``memory``) as it changes. Ray saves no
    scheduler state: ``--resume`` unpickles the scheduler as it was when the search started, with empty rungs,
    so restarted trials would be judged only against those reaching a rung after the resume. A scheduler with
    this mixin reads the file back before its first decision after a restore."""

    def _start_memory(self, memory: Path | None) -> None:
        self._memory, self._recalled = (None if memory is None else str(memory)), False

    def _records(self) -> list | dict:
        raise NotImplementedError

    def _load_records(self, records) -> None:
        raise NotImplementedError

    def _recall(self) -> None:
        # getattr: a search started by a tuner without this mixin unpickles a scheduler without these fields
        if getattr(self, "_recalled", True):
            return
        self._recalled = True
        if self._memory and os.path.isfile(self._memory):
            try:
                with open(self._memory) as handle:
                    self._load_records(json.load(handle))
            except (OSError, ValueError, TypeError, AttributeError) as exc:  # unreadable: Ray's empty rungs
                log.warning("%s: rung records not read back (%s); the rungs start empty", self._memory, exc)

    def _remember(self) -> None:
        """Write the records if they changed since the last write (most results are at no rung)."""
        memory = getattr(self, "_memory", None)
        if not memory or not os.path.isdir(os.path.dirname(memory)):
            return
        text = json.dumps(self._records())
        if text == getattr(self, "_written", None):
            return
        partial = memory + ".partial"
        with open(partial, "w") as handle:
            handle.write(text)
        os.replace(partial, memory)  # a driver killed mid-write leaves the last whole file
        self._written = text


class RememberingASHA(RungMemory, ASHAScheduler):
    """Ray's ASHA whose rung records survive ``--resume`` (``RungMemory``)."""

    def __init__(self, *args, memory: Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._start_memory(memory)

    def _records(self) -> list:
        return [[recorded for _, recorded in bracket._rungs] for bracket in self._brackets]

    def _load_records(self, records: list) -> None:
        for bracket, rungs in zip(self._brackets, records):
            for (_, recorded), saved in zip(bracket._rungs, rungs):
                recorded.update(saved)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._recall()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._recall()
        action = super().on_trial_result(tune_controller, trial, result)
        self._remember()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._remember()
