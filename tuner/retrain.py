"""Retrain one stage's model from an exported config, with no search:

    python -m tuner.retrain --stage teacher --config results/best_configs.yaml

Same data, split, seed, thread count and hyperparameters as the search's best trial: on CPU the run is
deterministic, so it reaches the trial's validation F1 (the best epoch is kept, as in the search).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tuner import registry
from tuner.cli import entry_point, results_parser
from tuner.config import METRIC, train_settings
from tuner.errors import TunerError
from tuner.spaces import check_config, read_yaml


def entry_from(config_file: Path, stage_name: str, member: str | None = None) -> dict:
    """The stage's exported entry; with ``member``, that front member's config and scores in it instead."""
    document = read_yaml(config_file)
    if not isinstance(document, dict) or stage_name not in document:
        raise TunerError(f"{config_file}: no entry for stage {stage_name!r}")
    entry = document[stage_name]
    if not isinstance(entry, dict) or not isinstance(entry.get("hyperparameters"), dict):
        raise TunerError(f"{config_file}: {stage_name}.hyperparameters is missing")
    stage = registry.by_name(stage_name)
    if member is None:
        return dict(entry, hyperparameters=check_config(stage, entry["hyperparameters"],
                                                         f"{config_file}: {stage_name}.hyperparameters"))
    found = [m for m in entry.get("pareto") or [] if isinstance(m, dict) and m.get("name") == member]
    if not found:
        names = ", ".join(str(m.get("name")) for m in entry.get("pareto") or [] if isinstance(m, dict)) or "none"
        raise TunerError(f"{config_file}: {stage_name}.pareto has no member {member!r} (members: {names})")
    config = check_config(stage, found[0].get("config"), f"{config_file}: {stage_name}.pareto[{member}].config")
    for key in ("val_f1", "epoch"):
        value = found[0].get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TunerError(f"{config_file}: {stage_name}.pareto[{member}].{key}: expected a number, got {value!r}")
    # a member may be a trial early stopping ended: train its config up to the epoch its checkpoint holds
    return dict(entry, hyperparameters=config, val_f1=found[0]["val_f1"], last_epoch=found[0]["epoch"])


@dataclass(frozen=True)
class Retraining:
    """What training an exported config again reads, loaded once: its recorded settings, the task and the stage's
    inputs (a teacher's logits), on the device this machine offers."""
    stage: registry.Stage
    settings: object  # tuner.config.RunSettings
    threads: int
    task: object
    tokenizer: object
    inputs: object
    device: str

    def best_epoch(self, config: dict, seed: int, keep, last_epoch: int | None = None,
                   echo=lambda line: None) -> tuple[dict, list[float]]:
        """Train ``config`` for the stage's epochs (up to ``last_epoch``); ``keep(model)`` sees each epoch that
        beats every earlier one. The best epoch's metrics and the validation F1 of every epoch."""
        profile, best, curve = self.settings.profile, None, []
        for result in self.stage.train(config, self.task, self.inputs, train_settings(
                profile, self.stage.epochs(profile), seed, self.threads, self.device)):
            curve.append(result.metrics[METRIC])
            echo(f"epoch {result.metrics['epoch']}: validation F1 {curve[-1]:.4f}")
            if best is None or curve[-1] > best[METRIC]:
                best = dict(result.metrics)
                keep(result.model)
            if result.metrics["epoch"] == last_epoch:
                break
        return best, curve

    def test_f1(self, model) -> float:
        from tuner.training import evaluate

        profile = self.settings.profile
        return evaluate(model.to(self.device), self.task.test, self.task.labels, profile.eval_batch_size,
                        self.task.pad_token_id, self.device, profile.precision)["f1"]


def prepare(stage: registry.Stage, entry: dict, results_dir: Path, data: str | None, teacher: Path | None,
            where: str = "the entry") -> Retraining:
    """Check ``entry`` against its teacher before any work, then load what training it again reads."""
    from tuner.spaces import value_ranges
    from tuner.task import check_teacher, load_task, recorded_settings, stage_inputs
    from tuner.training import select_device

    settings, threads = recorded_settings(entry, stage, results_dir, where, data, teacher)
    teacher_model = check_teacher(settings, stage) if stage.needs_teacher else None
    if teacher_model is not None:  # before any work: the teacher's logits take minutes on a full teacher
        stage.check_limits(teacher_model.config, {name: [value] for name, value in entry["hyperparameters"].items()},
                           f"{where}.hyperparameters.")
    try:
        stage.check(settings.profile, teacher_model, entry["hyperparameters"])
    except TunerError as error:
        raise TunerError(f"{where}.{error}") from None  # the key it names: under the entry
    task, tokenizer = load_task(settings, teacher_model)
    inputs = stage_inputs(stage, settings, task, teacher_model, len(tokenizer),
                          value_ranges(config=entry["hyperparameters"]))
    return Retraining(stage, settings, threads, task, tokenizer, inputs, select_device())


def retrain(stage: registry.Stage, entry: dict, results_dir: Path, output: Path, data: str | None,
            teacher: Path | None, echo=print, where: str = "the entry") -> dict:
    """Train ``entry``'s hyperparameters once under its recorded settings; keep the best epoch at ``output``."""
    from tuner.models import load_model, save_model

    run = prepare(stage, entry, results_dir, data, teacher, where)
    best, _ = run.best_epoch(entry["hyperparameters"], run.settings.trial_seed,
                             keep=lambda model: save_model(model, output, run.tokenizer),
                             last_epoch=entry.get("last_epoch"), echo=echo)
    return {"val_f1": best[METRIC], "epoch": best["epoch"], "test_f1": run.test_f1(load_model(output)),
            "output": str(output)}


@entry_point
def main(argv=None) -> int:
    parser = results_parser("python -m tuner.retrain", __doc__)
    parser.add_argument("--stage", required=True, choices=registry.names())
    parser.add_argument("--config", type=Path, default=None, help="exported configs (default: RESULTS/best_configs.yaml)")
    parser.add_argument("--output", type=Path, help="where the model goes (default: RESULTS/<stage>/retrained)")
    parser.add_argument("--data", help="override the recorded data source")
    parser.add_argument("--teacher", type=Path, help="teacher folder for the stages that read one (default: RESULTS/teacher/best)")
    parser.add_argument("--member", help="a front member's name (pareto.csv): retrain its config instead")
    args = parser.parse_args(argv)
    config_file = args.config or args.results_dir / "best_configs.yaml"
    output = args.output or args.results_dir / args.stage / "retrained"
    entry = entry_from(config_file, args.stage, args.member)
    outcome = retrain(registry.by_name(args.stage), entry, args.results_dir, output, args.data, args.teacher,
                      where=f"{config_file}: {args.stage}")
    print(f"retrained {args.stage}: validation F1 {outcome['val_f1']:.4f} at epoch {outcome['epoch']} "
          f"(search: {entry.get('val_f1', float('nan')):.4f}), test F1 {outcome['test_f1']:.4f}; saved to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
