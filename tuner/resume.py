"""What a search started with, and what ``--resume`` holds a run to: ``search_settings.yaml`` beside the stage's
search (the settings its trials depend on and the packing it chose), written when the search starts and compared
before anything runs again."""

from __future__ import annotations

from dataclasses import asdict

import torch

from tuner import packing
from tuner.cli import flag_hint
from tuner.config import RunSettings, plain, usable_cpus
from tuner.errors import TunerError
from tuner.registry import Stage
from tuner.spaces import SearchSpace
from tuner.task import SEARCH_SETTINGS, data_source, read_search_settings, teacher_folder


def search_settings(stage: Stage, settings: RunSettings, space: SearchSpace,
                    packed: packing.Packing | None = None) -> dict:
    """What a search's trials depend on; resuming with any of it changed would mix two different searches. The
    packing (``packed``) is chosen once the search starts; ``check_resumable`` compares it apart."""
    record = {"trials": settings.trials, "seed": settings.seed, "split": settings.split, "data": data_source(settings),
              "search_space_sha256": space.sha256, "objectives": list(settings.objectives),
              "profile": plain(asdict(settings.profile))}
    if settings.search_seed is not None:  # recorded only when given: a search started without it resumes as before
        record["search_seed"] = settings.search_seed
    if stage.needs_teacher:
        record["teacher"] = str(teacher_folder(settings).resolve())
    if packed is not None:
        record["packing"] = packed.described()
    return record


def check_resumable(stage: Stage, settings: RunSettings, space: SearchSpace) -> None:
    """--resume continues a search only under the settings it started with (Tune keeps its first trial count
    and would silently ignore a new one; other changes would train half the trials one way, half another)."""
    record_file = settings.stage_dir(stage.name) / SEARCH_SETTINGS
    if not record_file.is_file():
        return  # a search started before this record existed
    first = read_search_settings(record_file)
    started = first.pop("packing", None)
    first = flatten(first)
    for key, value in flatten(search_settings(stage, settings, space)).items():
        before = first.get(key, ["f1"] if key == "objectives" else None)  # recorded since --objectives exists
        if before != value:
            raise TunerError(f"--resume: {record_file} has {key} {before!r}, this run {value!r}{flag_hint(key)}: "
                             f"resume with the flags the search started with, or pass --overwrite to start again")
    if started is None:
        return  # a search started before the packing was recorded
    packed = packing.recorded(started, str(record_file))
    asked = {"cpus_per_trial": settings.cpus_per_trial or None, "gpus_per_trial": settings.gpus_per_trial}
    for key, value in asked.items():
        if value is not None and getattr(packed, key) != value:
            raise TunerError(f"--resume: {record_file} has packing.{key} {getattr(packed, key)!r}, this run {value!r} "
                             f"(--{key.replace('_', '-')}): resume without it (the search packs as it started), "
                             "or pass --overwrite to start again")
    if settings.address is None and (packed.cpus_per_trial > usable_cpus()
                                     or packed.gpus_per_trial > torch.cuda.device_count()):
        raise TunerError(f"--resume: {record_file} packs {packed.cpus_per_trial:g} CPUs and {packed.gpus_per_trial:g} "
                         f"GPUs per trial, more than this machine has ({usable_cpus()} CPUs, "
                         f"{torch.cuda.device_count()} GPUs); trials would wait forever: resume where it started")


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
