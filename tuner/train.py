"""Retrain one stage's model from an exported config, with no search:

    python -m tuner.train --stage teacher --config results/best_configs.yaml

Same data, split, seed, thread count and hyperparameters as the search's best trial: on CPU the run is
deterministic, so it reaches the trial's validation F1 (the best epoch is kept, as in the search).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tuner.config import METRIC, Profile, RunSettings, default_threads, train_settings
from tuner.errors import TunerError
from tuner.run import OneLineParser


def entry_from(config_file: Path, stage: str) -> dict:
    from tuner.spaces import read_yaml

    document = read_yaml(config_file)
    if not isinstance(document, dict) or stage not in document:
        raise TunerError(f"{config_file}: no entry for stage {stage!r}")
    entry = document[stage]
    for key in ("hyperparameters", "seed", "data", "split", "training"):
        if not isinstance(entry, dict) or entry.get(key) is None:
            raise TunerError(f"{config_file}: {stage}.{key} is missing")
    if not isinstance(entry["training"], dict) or not isinstance(entry["hyperparameters"], dict):
        raise TunerError(f"{config_file}: {stage}.training and {stage}.hyperparameters must be mappings")
    return entry


def data_argument(source: str) -> str:
    """The ``--data`` value that reproduces a recorded data source."""
    return "conll2003" if source.startswith("hub:") else source


def retrain(stage: str, entry: dict, results_dir: Path, output: Path, data: str | None, teacher: Path | None,
            echo=print) -> dict:
    from tuner import pipeline
    from tuner.models import load_model, model_labels, save_model
    from tuner.stages import TRAIN
    from tuner.training import evaluate, select_device

    training = dict(entry["training"])
    threads = training.pop("threads", None) or default_threads(0)
    try:
        profile = Profile(**training)
    except TypeError as exc:
        raise TunerError(f"{stage}.training: {exc}") from None
    settings = RunSettings(stages=(stage,), trials=1, profile=profile, data=data or data_argument(entry["data"]),
                           split=entry["split"], seed=entry["seed"], results_dir=results_dir, teacher=teacher)
    if stage == "teacher":
        tokenizer, labels = pipeline.load_tokenizer(profile.model), None
        teacher_model = None
    else:
        teacher_model = load_model(pipeline.teacher_folder(settings))
        tokenizer = pipeline.load_tokenizer(str(pipeline.teacher_folder(settings)))
        labels = model_labels(teacher_model)
    task = pipeline.build_task(settings, tokenizer, labels)
    inputs = pipeline.stage_inputs(stage, settings, task, teacher_model, len(tokenizer))
    settings_for_trial = train_settings(profile, stage, entry["seed"], threads, device=select_device())
    best = None
    for result in TRAIN[stage](entry["hyperparameters"], task, inputs, settings_for_trial):
        echo(f"epoch {result.metrics['epoch']}: validation F1 {result.metrics[METRIC]:.4f}")
        if best is None or result.metrics[METRIC] > best[METRIC]:
            best = dict(result.metrics)
            save_model(result.model, output, tokenizer)
    model = load_model(output)
    device = select_device()
    test = evaluate(model.to(device), task.test, task.labels, profile.eval_batch_size, task.pad_token_id, device,
                    profile.precision)
    return {"val_f1": best[METRIC], "epoch": best["epoch"], "test_f1": test["f1"], "output": str(output)}


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m tuner.train", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--stage", required=True, choices=("teacher", "factorized", "student"))
    parser.add_argument("--config", type=Path, default=None, help="exported configs (default: RESULTS/best_configs.yaml)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--output", type=Path, help="where the model goes (default: RESULTS/<stage>/retrained)")
    parser.add_argument("--data", help="override the recorded data source")
    parser.add_argument("--teacher", type=Path, help="teacher folder for factorized/student (default: RESULTS/teacher/best)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config_file = args.config or args.results_dir / "best_configs.yaml"
    output = args.output or args.results_dir / args.stage / "retrained"
    try:
        entry = entry_from(config_file, args.stage)
        outcome = retrain(args.stage, entry, args.results_dir, output, args.data, args.teacher)
    except TunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"retrained {args.stage}: validation F1 {outcome['val_f1']:.4f} at epoch {outcome['epoch']} "
          f"(search: {entry.get('val_f1', float('nan')):.4f}), test F1 {outcome['test_f1']:.4f}; saved to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
