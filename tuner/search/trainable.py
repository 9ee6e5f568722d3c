"""The Tune trainable: one trial runs one stage config, reports each epoch to Tune and checkpoints the epochs
that beat its best so far. The stage's training itself is plain PyTorch (``Stage.train`` yields an epoch at a
time); this is where it meets ``tune.report``."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from tuner.config import METRIC, TrainSettings
from tuner.registry import Stage
from tuner.memory import release_memory
from tuner.training import save_checkpoint, select_device


# Named _trial: Ray names each trial's folder after the trainable, and --resume refuses a trainable of another
# name than the one the search started with.
def _trial(config: dict, stage: Stage, task, inputs, settings: TrainSettings, use_gpu: bool,
           rungs: frozenset) -> None:
    """The Tune trainable: run one stage config and report each epoch; checkpoint only an epoch that beats the
    trial's best so far, so the one checkpoint kept per trial is both its best model and where it resumes.

    At an ASHA rung (``rungs``: ``SearchMethod.rungs``) the epoch is reported first without a
    checkpoint. ``tune.report`` returns only once the scheduler lets the trial go on; the checkpoint then follows
    in a second report of the same epoch (its scores again, ``rereport: true``, training and evaluation seconds
    0). A trial ASHA stops writes no checkpoint for
    its last epoch, which cannot be the search's best: ASHA stops only a score below the rung's cutoff, and the
    search's best is above every score recorded there. A front search passes no ``rungs``: ParetoASHA may stop a
    trial whose rung epoch is on the front, and the front needs that epoch's model, so every epoch that beats
    the trial's best is checkpointed in its one report. A trial's last epoch is checkpointed without AdamW's
    moments, since nothing continues from it: a third of the bytes.

    Besides the stage's metrics, each report carries where the trial's time outside training and evaluation
    went: ``setup_seconds`` (first epoch: releasing the previous trial's memory, building the model and optimizer,
    restoring a checkpoint), ``checkpoint_seconds`` (writing this epoch's checkpoint) and ``report_seconds`` (the
    previous report, which hands any checkpoint to Tune's storage), and whether it carries a checkpoint
    (``checkpointed``)."""
    entered = time.perf_counter()
    # Ray's note of every checkpoint a trial hands it ("Checkpoint successfully created at: ...") is no news: the
    # trial's reports say which epochs carry one
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    release_memory()  # a reused process: the previous trial's freed heap slowed this one's training
    settings = dataclasses.replace(settings, device=select_device(use_gpu))
    checkpoint = tune.get_checkpoint()
    best = checkpoint.get_metadata().get(METRIC, -math.inf) if checkpoint else -math.inf
    node_id = ray.get_runtime_context().get_node_id()
    report_seconds = 0.0  # the previous report's
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume:
        for result in stage.train(config, task, inputs, settings, Path(resume) if resume else None):
            metrics = dict(result.metrics, node_id=node_id, checkpoint_seconds=0.0, report_seconds=report_seconds,
                           checkpointed=False, rereport=False)
            if entered is not None:  # the first epoch this process ran, fresh or resumed
                metrics["setup_seconds"] = (time.perf_counter() - entered - metrics["train_seconds"]
                                            - metrics["eval_seconds"])
                entered = None
            if metrics[METRIC] <= best:
                report_seconds = _report(metrics, None)
                continue
            best = metrics[METRIC]
            last = result.epoch + 1 >= settings.epochs
            if result.epoch + 1 in rungs and not last:  # returns only if ASHA keeps the trial
                report_seconds = _report(metrics, None)
                metrics = dict(metrics, train_seconds=0.0, eval_seconds=0.0, report_seconds=report_seconds,
                               rereport=True)
                metrics.pop("setup_seconds", None)
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                save_checkpoint(Path(folder), result, optimizer=not last)
                saved = tune.Checkpoint.from_directory(folder)
                saved.set_metadata({METRIC: best})
                metrics.update(checkpoint_seconds=time.perf_counter() - started, checkpointed=True)
                report_seconds = _report(metrics, saved)


def _report(metrics: dict, checkpoint) -> float:
    """``tune.report``, timed (Tune copies the checkpoint into the trial's folder before it returns)."""
    started = time.perf_counter()
    tune.report(metrics, checkpoint=checkpoint)
    return time.perf_counter() - started
