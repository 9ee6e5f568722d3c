"""The pipeline: validate every input, build the shared data once, then search each stage and save its best.

Nothing is written under the results folder until every input has been read and checked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch
import yaml

from tuner import export
from tuner.config import METRIC, RunSettings, default_threads, train_settings
from tuner.data import TaskData, encode, label_list, load_corpus, split_sentences, subsample
from tuner.errors import TunerError
from tuner.models import (count_parameters, initial_token_classifier, load_model, load_tokenizer, model_labels,
                          ModelState, save_model, student_shape)
from tuner.spaces import load_space
from tuner.stages import factorized, student
from tuner.training import evaluate, select_device

log = logging.getLogger(__name__)

BEST = "best"
RESULT_FILE = "result.json"
SEARCH_SETTINGS = "search_settings.yaml"  # beside search/: what its trials depend on, checked by --resume
VERSIONED = ("tuner", "torch", "transformers", "datasets", "seqeval", "ray", "optuna")


def teacher_folder(settings: RunSettings) -> Path:
    return Path(settings.teacher) if settings.teacher else settings.stage_dir("teacher") / BEST


def check_inputs(settings: RunSettings):
    """Everything that can be refused before any work: search spaces, prior stages, existing searches. Returns
    the search spaces and the loaded teacher (None when this run trains it)."""
    spaces = {stage: load_space(stage, settings.space_file(stage)) for stage in settings.stages}
    if "teacher" in settings.stages and settings.teacher:
        raise TunerError("--teacher names the teacher of a factorized or student search; "
                         "with --stage teacher or all the teacher is the one this run trains")
    teacher = None if "teacher" in settings.stages else check_teacher(settings)
    if settings.address is None:  # a local Ray gets this machine's CPUs and GPUs
        check_resources(settings, os.cpu_count() or 1, torch.cuda.device_count())
    experiments = {stage: settings.stage_dir(stage) / "search" for stage in settings.stages}
    if settings.resume and not any(e.is_dir() for e in experiments.values()):
        raise TunerError(f"--resume: no search to resume at {experiments[settings.stages[0]]}")
    for stage, experiment in experiments.items():
        if experiment.exists() and not (settings.resume or settings.overwrite):
            raise TunerError(f"{experiment} holds an earlier search of stage {stage}: "
                             "pass --resume to continue it or --overwrite to start again")
        if experiment.is_dir() and settings.resume:
            check_resumable(stage, settings, spaces[stage])
    return spaces, teacher


def data_source(settings: RunSettings) -> str:
    """``--data`` as compared between runs: ``conll2003`` (the Hub) or the folder's absolute path."""
    return settings.data if settings.data == "conll2003" else str(Path(settings.data).resolve())


def search_settings(stage: str, settings: RunSettings, space) -> dict:
    """What a search's trials depend on; resuming with any of it changed would mix two different searches."""
    record = {"trials": settings.trials, "seed": settings.seed, "split": settings.split, "data": data_source(settings),
              "search_space_sha256": space.sha256, "profile": plain(asdict(settings.profile))}
    if stage != "teacher":
        record["teacher"] = str(teacher_folder(settings).resolve())
    return record


def check_resumable(stage: str, settings: RunSettings, space) -> None:
    """--resume continues a search only under the settings it started with (Tune keeps its first trial count
    and would silently ignore a new one; other changes would train half the trials one way, half another)."""
    record_file = settings.stage_dir(stage) / SEARCH_SETTINGS
    if not record_file.is_file():
        return  # a search started before this record existed
    try:
        first = yaml.safe_load(record_file.read_text())
    except yaml.YAMLError as error:
        raise TunerError(f"{record_file}: not readable YAML ({str(error).splitlines()[0]})") from None
    first = flatten(first if isinstance(first, dict) else {})
    for key, value in flatten(search_settings(stage, settings, space)).items():
        before = first.get(key)
        if before != value:
            raise TunerError(f"--resume: {record_file} has {key} {before!r}, this run {value!r}{flag_hint(key)}: "
                             f"resume with the flags the search started with, or pass --overwrite to start again")


FLAGS_BY_KEY = {"profile.name": "--profile", "profile.label_all_subtokens": "--label-subtokens",
                "search_space_sha256": "the search space file"}  # the rest: --<key, dashed> where that flag exists


def flag_hint(key: str) -> str:
    """`` (set by --flag)`` for a search_settings key that a CLI flag sets, else nothing."""
    from tuner.run import parser

    flag = FLAGS_BY_KEY.get(key)
    if flag is None:
        dashed = "--" + key.removeprefix("profile.").replace("_", "-")
        flag = dashed if dashed in parser()._option_string_actions else None
    return f" (set by {flag})" if flag else ""


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resources(settings: RunSettings, cpus_per_node: int, gpus_per_node: float) -> None:
    """A trial asking for more than any node has would wait forever: refuse it."""
    if settings.cpus_per_trial > cpus_per_node or settings.gpus_per_trial > gpus_per_node:
        raise TunerError(f"--cpus-per-trial {settings.cpus_per_trial:g} / --gpus-per-trial "
                         f"{settings.gpus_per_trial:g}: no Ray node has that many ({cpus_per_node} CPUs, "
                         f"{gpus_per_node:g} GPUs at most); trials would wait forever")


def check_teacher(settings: RunSettings):
    """The loaded teacher, once its folder is known to hold a plain (unfactorized) model trained on the same data
    split: a different seed or split would put the teacher's training sentences into the student's test split."""
    folder = teacher_folder(settings)
    stage = settings.stages[0]
    if not (folder / "config.json").is_file():
        raise TunerError(f"no teacher result at {folder}: run `python -m tuner.run --stage teacher` "
                         f"before --stage {stage} (or pass --teacher PATH)")
    teacher = load_model(folder)
    if getattr(teacher.config, "factor_dim", None):
        raise TunerError(f"--teacher {folder}: a factorized or student model, not a teacher")
    record_file = folder / RESULT_FILE
    if not record_file.is_file():
        return teacher  # a teacher trained elsewhere: nothing to compare
    record = json.loads(record_file.read_text())
    ours = {"seed": settings.seed, "split": settings.split}
    for key, value in ours.items():
        if record.get(key) != value:
            raise TunerError(f"{record_file}: the teacher used {key} {record.get(key)!r}, this run {value!r}; "
                             f"use --{key} {record.get(key)} so the test split stays unseen")
    data = data_source(settings)
    if settings.data != "conll2003" and record.get("data") not in (data, settings.data):
        raise TunerError(f"{record_file}: the teacher used data {record.get('data')!r}, this run {data!r}")
    return teacher


def select_sentences(settings: RunSettings):
    """The corpus and the sentences a search uses: the split protocol, then the profile's seeded subsets."""
    corpus = load_corpus(settings.data)
    splits = split_sentences(corpus, settings.split, settings.seed)
    profile = settings.profile
    limits = {"train": profile.train_sentences, "validation": profile.eval_sentences, "test": profile.test_sentences}
    return corpus, {name: subsample(splits[name], limit, settings.seed) for name, limit in limits.items()}


def build_task(settings: RunSettings, tokenizer, labels: list | None) -> TaskData:
    corpus, chosen = select_sentences(settings)
    labels = labels or label_list(corpus.splits["train"])
    profile = settings.profile
    encoded = {name: encode(sentences, tokenizer, labels, profile.max_length, profile.label_all_subtokens)
               for name, sentences in chosen.items()}
    return TaskData(labels, encoded["train"], encoded["validation"], encoded["test"], tokenizer.pad_token_id,
                    corpus.source)


def versions() -> dict:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def stage_inputs(stage: str, settings: RunSettings, task: TaskData, teacher, vocab_size: int):
    """What every trial of ``stage`` starts from, computed once on the driver."""
    profile = settings.profile
    if stage == "teacher":
        return ModelState.of(initial_token_classifier(profile.model, task.labels, settings.seed, vocab_size))
    if stage == "factorized":
        return factorized.prepare(teacher)
    num_layers, factor_dim = student_shape(teacher, profile.max_params)
    return student.prepare(teacher, task, num_layers, factor_dim, profile.max_params, profile.eval_batch_size,
                           select_device())


def save_best(stage: str, settings: RunSettings, outcome, task: TaskData, tokenizer, space) -> dict:
    """Write ``results/<stage>/best`` (model, tokenizer, resolved config, search space, metrics) and the trials
    table; returns the stage's result record."""
    model = load_model(outcome.best_checkpoint)
    device = select_device()
    test = evaluate(model.to(device), task.test, task.labels, settings.profile.eval_batch_size, task.pad_token_id,
                    device, settings.profile.precision)
    stage_dir = settings.stage_dir(stage)
    best = stage_dir / BEST
    staging = stage_dir / (BEST + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(model.cpu(), staging, tokenizer)
    shutil.copyfile(space.path, staging / "search_space.yaml")
    resolved = {"settings": plain(asdict(settings), drop="profile"), "profile": plain(asdict(settings.profile))}
    (staging / "run_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    record = {
        "stage": stage,
        "hyperparameters": outcome.best_config,
        "val_f1": outcome.best_metrics[METRIC],
        "test_f1": test["f1"],
        "test_precision": test["precision"],
        "test_recall": test["recall"],
        "epoch": outcome.best_metrics.get("epoch"),
        "parameters": count_parameters(model),
        "num_layers": model.config.num_hidden_layers,
        "factor_dim": getattr(model.config, "factor_dim", None),
        "checkpoint": str(best),
        "search_space": str(space.path),
        "search_space_sha256": space.sha256,
        "seed": settings.seed,
        "data": task.source,
        "split": settings.split,
        "profile": settings.profile.name,
        "training": training_record(settings.profile, outcome.threads),
        "trials": len(outcome.trials),
        "errored_trials": [{"trial": t, "config": c, "error": e} for t, c, e in outcome.errored],
        "search_wall_seconds": outcome.wall_seconds,
        "versions": versions(),
    }
    (staging / RESULT_FILE).write_text(json.dumps(record, indent=2, default=str))
    shutil.rmtree(best, ignore_errors=True)
    staging.rename(best)
    outcome.trials.to_csv(stage_dir / "trials.csv", index=False)
    return record


def plain(fields: dict, drop: str | None = None) -> dict:
    """Dataclass fields as YAML/JSON-ready values (paths as strings), less ``drop``."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in fields.items() if k != drop}


def training_record(profile, threads: int) -> dict:
    """The non-searched settings a retrain needs to reproduce a trial (``python -m tuner.train``)."""
    return dict(plain(asdict(profile), drop="space_dir"), threads=threads)


def run(settings: RunSettings, echo=print) -> dict:
    """Run the requested stages in order; returns stage -> result record."""
    from tuner import search  # Ray starts only once the inputs are known to be good

    spaces, teacher_model = check_inputs(settings)  # the teacher is loaded once; no stage changes it
    if teacher_model is None:
        tokenizer, labels = load_tokenizer(settings.profile.model), None
    else:
        tokenizer = load_tokenizer(str(teacher_folder(settings)))
        labels = model_labels(teacher_model)
    task = build_task(settings, tokenizer, labels)
    echo(f"data: {task.source} ({settings.split} split): {len(task.train)} train, {len(task.validation)} "
         f"validation, {len(task.test)} test sentences; labels {' '.join(task.labels)}")
    cluster = search.start_ray(settings.address, settings.dashboard_host, settings.quiet)
    echo(f"Ray dashboard: {cluster.dashboard_url}" + (f" (log in with the token in {cluster.token_file})"
                                                      if cluster.token_file else ""))
    try:
        check_resources(settings, cluster.cpus_per_node, cluster.gpus_per_node)  # what a joined cluster has
    except TunerError:
        search.stop_ray()
        raise
    cpus = settings.cpus_per_trial or cluster.cpus_per_node
    threads = default_threads(cpus)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    records = {}
    try:
        for stage in settings.stages:
            if stage != "teacher" and teacher_model is None:  # --stage all: the teacher this run just saved
                teacher_model = load_model(teacher_folder(settings))
            inputs = stage_inputs(stage, settings, task, teacher_model, len(tokenizer))
            if settings.overwrite:
                shutil.rmtree(settings.stage_dir(stage) / "search", ignore_errors=True)
            resume = settings.resume and (settings.stage_dir(stage) / "search").is_dir()  # else: start it
            if not resume:
                search.reset_study(Path(settings.results_dir), stage)
                settings.stage_dir(stage).mkdir(parents=True, exist_ok=True)
                (settings.stage_dir(stage) / SEARCH_SETTINGS).write_text(
                    yaml.safe_dump(search_settings(stage, settings, spaces[stage]), sort_keys=False))
            echo(f"stage {stage}: {settings.trials} trials over {spaces[stage].path}")
            trial_settings = train_settings(settings.profile, stage, settings.seed, threads)
            outcome = search.search(stage, spaces[stage], task, inputs, trial_settings, trials=settings.trials,
                                    seed=settings.seed, results_dir=Path(settings.results_dir), cpus_per_trial=cpus,
                                    gpus_per_trial=settings.gpus_per_trial, max_failures=settings.max_failures,
                                    reuse_actors=not settings.process_per_trial,
                                    resume=resume, quiet=settings.quiet)
            records[stage] = save_best(stage, settings, outcome, task, tokenizer, spaces[stage])
            export.write_exports(Path(settings.results_dir))
    finally:
        if not settings.keep_dashboard:
            search.stop_ray()
    return records


def summary_line(record: dict) -> str:
    hparams = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record["hyperparameters"].items())
    line = (f"best {record['stage']}: validation F1 {record['val_f1']:.4f}, test F1 {record['test_f1']:.4f}, "
            f"{record['parameters']:,} parameters; config {hparams}; saved to {record['checkpoint']}")
    for errored in record["errored_trials"]:
        line += f"\n  errored trial {errored['trial']} {errored['config']}: {errored['error']}"
    return line
