"""What a run's stages start from: the teacher (found and checked), the tokenizer and labels it implies, the
encoded sentences, and each stage's prepared inputs. The pipeline, ``tuner.retrain`` and the benchmarks all
build them here."""

from __future__ import annotations

from pathlib import Path

import yaml
from torch import nn

from tuner.config import Profile, RunSettings, default_threads
from tuner.data import TaskData, encode, label_list, load_corpus, split_sentences, subsample
from tuner.errors import TunerError
from tuner.export import read_json
from tuner.models import load_model, load_tokenizer, model_labels
from tuner.registry import Stage, StageContext, teacher_stage
from tuner.training import select_device

BEST = "best"  # results/<stage>/best: a stage's best model, what the next stage reads
RESULT_FILE = "result.json"
SEARCH_SETTINGS = "search_settings.yaml"  # beside search/: what its trials depend on, checked by --resume


def teacher_folder(settings: RunSettings) -> Path:
    """``--teacher``, else the best model of this results folder's teacher stage."""
    return Path(settings.teacher) if settings.teacher else settings.stage_dir(teacher_stage().name) / BEST


def data_source(settings: RunSettings) -> str:
    """``--data`` as compared between runs: ``conll2003`` (the Hub) or the folder's absolute path."""
    return settings.data if settings.data == "conll2003" else str(Path(settings.data).resolve())


def data_argument(source: str) -> str:
    """The ``--data`` value that reproduces a recorded data source."""
    return "conll2003" if source.startswith("hub:") else source


def recorded_settings(record: dict, stage: Stage, results_dir: Path, where: str, data: str | None = None,
                      teacher: Path | None = None) -> tuple[RunSettings, int]:
    """The settings a saved result was trained under (its data, split, seed and ``training`` profile, as
    ``result.json`` and ``best_configs.yaml`` record them) and its trials' thread count; ``where`` names the
    record in errors."""
    if not isinstance(record, dict):
        raise TunerError(f"{where}: expected a mapping (a stage's result record), got {type(record).__name__}")
    for key in ("seed", "data", "split", "training"):
        if record.get(key) is None:
            raise TunerError(f"{where}: {key} is missing")
    if not isinstance(record["training"], dict):
        raise TunerError(f"{where}: training must be a mapping")
    training = dict(record["training"])
    threads = training.pop("threads", None) or default_threads(0)
    try:
        profile = Profile(**training)
    except (TypeError, TunerError) as exc:  # a key this version does not know, one it lacks, or a bad value
        raise TunerError(f"{where}: training: {exc}") from None
    settings = RunSettings(stages=(stage,), trials=1, profile=profile, data=data or data_argument(record["data"]),
                           split=record["split"], seed=record["seed"], search_seed=record.get("search_seed"),
                           results_dir=results_dir, teacher=teacher)
    return settings, threads


def check_teacher(settings: RunSettings, stage: Stage) -> nn.Module:
    """The loaded teacher, once its folder is known to hold a plain (unfactorized) model trained on the same data
    split: a different seed or split would put the teacher's training sentences into ``stage``'s test split."""
    folder = teacher_folder(settings)
    if not (folder / "config.json").is_file():
        raise TunerError(f"no teacher result at {folder}: run `python -m tuner.run --stage {teacher_stage().name}` "
                         f"before --stage {stage.name} (or pass --teacher PATH)")
    teacher = load_model(folder)
    if getattr(teacher.config, "factor_dim", None):
        raise TunerError(f"--teacher {folder}: a factorized or student model, not a teacher")
    record_file = folder / RESULT_FILE
    if not record_file.is_file():
        return teacher  # a teacher trained elsewhere: nothing to compare
    record = read_json(record_file)
    if not isinstance(record, dict):
        raise TunerError(f"{record_file}: expected a JSON object (a teacher's result record), got "
                         f"{type(record).__name__}")
    for key, value in {"seed": settings.seed, "split": settings.split}.items():
        if record.get(key) != value:
            raise TunerError(f"{record_file}: the teacher used {key} {record.get(key)!r}, this run {value!r}; "
                             f"use --{key} {record.get(key)} so the test split stays unseen")
    data, recorded = data_source(settings), record.get("data")
    # the Hub's source is recorded with its revision (hub:<id>@<revision>): any Hub teacher fits a Hub run
    if not (str(recorded).startswith("hub:") if data == "conll2003" else recorded in (data, settings.data)):
        fix = f"; use --data {data_argument(recorded)} so the test split stays unseen" if recorded else ""
        raise TunerError(f"{record_file}: the teacher used data {recorded!r}, this run {data!r}{fix}")
    return teacher


def select_sentences(settings: RunSettings):
    """The corpus and the sentences a search uses: the split protocol, then the profile's seeded subsets."""
    corpus = load_corpus(settings.data)
    splits = split_sentences(corpus, settings.split, settings.seed)
    profile = settings.profile
    limits = {"train": profile.train_sentences, "validation": profile.eval_sentences, "test": profile.test_sentences}
    return corpus, {name: subsample(splits[name], limit, settings.seed) for name, limit in limits.items()}


def build_task(settings: RunSettings, tokenizer, labels: list | None) -> TaskData:
    """The encoded train, validation and test sentences; ``labels`` None: read from the training data."""
    corpus, chosen = select_sentences(settings)
    labels = labels or label_list(corpus.splits["train"])
    profile = settings.profile
    encoded = {name: encode(sentences, tokenizer, labels, profile.max_length, profile.label_subtokens)
               for name, sentences in chosen.items()}
    return TaskData(labels, encoded["train"], encoded["validation"], encoded["test"], tokenizer.pad_token_id,
                    corpus.source)


def load_task(settings: RunSettings, teacher: nn.Module | None):
    """``(task, tokenizer)``: with a teacher, its tokenizer and its label order; without one (a run that trains
    the teacher), the profile's model's tokenizer and the labels of the training data."""
    if teacher is None:
        tokenizer, labels = load_tokenizer(settings.profile.model), None
    else:
        tokenizer, labels = load_tokenizer(str(teacher_folder(settings))), model_labels(teacher)
    return build_task(settings, tokenizer, labels), tokenizer


def stage_inputs(stage: Stage, settings: RunSettings, task: TaskData, teacher: nn.Module | None,
                 vocab_size: int, ranges: dict | None = None) -> object:
    """What every trial of ``stage`` starts from, computed once on the driver; ``ranges`` (name -> (lowest,
    highest)) are the values its trials may take (``value_ranges``)."""
    context = StageContext(profile=settings.profile, task=task, seed=settings.trial_seed,
                           teacher=teacher if stage.needs_teacher else None, vocab_size=vocab_size,
                           device=select_device(), ranges=dict(ranges or {}))
    return stage.prepare(context)


def read_search_settings(record_file: Path) -> dict:
    """A search's ``search_settings.yaml`` as a mapping ({} when missing)."""
    if not record_file.is_file():
        return {}
    try:
        first = yaml.safe_load(record_file.read_text())
    except yaml.YAMLError as error:
        raise TunerError(f"{record_file}: not readable YAML ({str(error).splitlines()[0]})") from None
    return first if isinstance(first, dict) else {}
