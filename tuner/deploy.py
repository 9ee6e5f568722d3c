"""Deploy what the search found: a stage's best model as ONNX (float32) and int8 ONNX, gated on F1, measured.

    python -m tuner.deploy --results-dir results --stage student

Writes ``results/<stage>/deploy/``: ``model.onnx``, ``model.int8.onnx`` (ONNX Runtime dynamic quantization),
the tokenizer and label files, and ``deploy.json``: for PyTorch float32, ONNX float32 and ONNX int8, the
validation and test F1 (the search's word-level seqeval scoring, on the sentences the search used), the size on
disk and the CPU latency. int8 may lose at most ``--max-f1-drop`` F1 points on validation against PyTorch
float32; where no whole-model recipe keeps that, the recipes are tried again on a copy fine-tuned for
``--qat-epochs`` with int8's rounding in its forward (tuner.qat), then quantizations that keep the most
sensitive nodes in float32; every try is recorded, and where none passes the float ONNX model is kept alone and
the command exits 1. ``model.int8.onnx`` then quantizes ``model.onnx`` or, where the gate needed it, the
fine-tuned copy (``deploy.json``: each try's ``source``, and ``quantization_aware``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from tuner import figures, registry
from tuner.cli import entry_point, int_at_least, positive_int, results_parser
from tuner.config import usable_cpus
from tuner.errors import TunerError
from tuner.int8 import FallbackSearch, paired_bootstrap
from tuner.task import BEST, RESULT_FILE
from tuner.timing import cpu_name, latency

DEPLOY = "deploy"
TRY_LATENCY_SENTENCES = 50  # each int8 try's batch-1 latency, one pass (the chosen model is timed in full)
FLOAT_FILE, INT8_FILE, REPORT_FILE = "model.onnx", "model.int8.onnx", "deploy.json"
# the quantization-aware copy's float file and its graph prepared for quantization, while the gate tries them
TUNED_FILE, TUNED_PREPARED = "fine-tuned.onnx", "prepared-fine-tuned.onnx"
GATE_FAILED = 1  # exit status when int8 lost more F1 than allowed (the float ONNX model is still deployed)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def load_saved(folder: Path):
    """A searched stage's best model, tokenizer and result record; a one-line TunerError for anything else."""
    from tuner.export import read_json
    from tuner.models import load_model, load_tokenizer

    if not folder.is_dir():
        raise TunerError(f"{folder}: no such folder: search the stage first (python -m tuner.run --stage "
                         f"{folder.parent.name})")
    model = load_model(folder)
    if not (folder / RESULT_FILE).is_file():
        raise TunerError(f"{folder}: no {RESULT_FILE}, so the sentences to score it on are unknown")
    return model, load_tokenizer(str(folder)), read_json(folder / RESULT_FILE)


def scoring_task(stage, record: dict, folder: Path, results_dir: Path, tokenizer, labels: list,
                 gate_sentences: int | None = None):
    """The search's split, encoded as it encoded it, with ``gate_sentences`` of its validation split (None: all of
    it; the gate decides there, and on a search's 500-sentence subset one sentence moves F1 by about 0.1 point)
    and the search's test sentences; and the settings the search recorded."""
    from tuner.spaces import read_yaml
    from tuner.task import SEARCH_SETTINGS, build_task, recorded_settings

    searched = folder.parent / SEARCH_SETTINGS  # the teacher the search read (--teacher), where it still is
    found = read_yaml(searched) if searched.is_file() else None
    teacher = found.get("teacher") if isinstance(found, dict) else None
    settings, _ = recorded_settings(record, stage, results_dir, str(folder / RESULT_FILE),
                                    teacher=Path(teacher) if isinstance(teacher, str) and Path(teacher).is_dir()
                                    else None)
    settings = dataclasses.replace(settings, profile=dataclasses.replace(settings.profile,
                                                                         eval_sentences=gate_sentences))
    return build_task(settings, tokenizer, labels), settings


def predictions(forward, task, batch_size: int) -> dict:
    """Word-level tags of the validation and test sentences."""
    from tuner.training import word_tags

    return {split: word_tags(forward, data, task.labels, batch_size, task.pad_token_id)
            for split, data in (("validation", task.validation), ("test", task.test))}


def scores(tags: dict, task) -> dict:
    from tuner.metrics import entity_scores

    return {split: entity_scores(getattr(task, split).word_tags, tags[split])["f1"] for split in tags}


def gate(baseline_f1: float, quantizations, quantized, max_f1_drop: float):
    """Try each quantization in turn (``quantized(how) -> (file, {"validation": f1, "test": f1})``) until one
    loses at most ``max_f1_drop`` F1 points on validation against ``baseline_f1``. Returns every try's record
    and the (file, scores, quantization) that passed, or None."""
    tries = []
    for how in quantizations:
        candidate, found = quantized(how)
        drop = (baseline_f1 - found["validation"]) * 100
        passed = drop <= max_f1_drop
        tries.append(dict(how.record(), validation_f1=found["validation"], test_f1=found["test"],
                          drop_points=drop, bytes=candidate.stat().st_size, passed=passed,
                          **{k: v for k, v in found.items() if k not in ("validation", "test", "tags")}))
        if passed:
            return tries, (candidate, found, how)
    return tries, None


def load_stage(stage, results_dir: Path, pareto: bool = False, gate_sentences: int | None = None,
               qat_epochs: int = 0) -> tuple[list, object, object, object]:
    """What deploying a searched stage reads, loaded (so checked) before anything is written: each model to deploy
    as (model, tokenizer, its folder, its deploy folder, its hyperparameters), the stage's best model or with
    ``pareto`` every member of its front; the search's sentences, encoded once (every model of the stage is
    scored on them), with the settings they were searched under; and, where quantization-aware fine-tuning
    (``qat_epochs``) would read it, the checked teacher (else None)."""
    from tuner.export import read_json
    from tuner.front import FRONT_DIR
    from tuner.models import load_model, load_tokenizer, model_labels
    from tuner.task import check_teacher

    best = Path(results_dir) / stage.name / BEST
    model, tokenizer, record = load_saved(best)
    task, settings = scoring_task(stage, record, best, Path(results_dir), tokenizer, model_labels(model),
                                  gate_sentences)
    teacher = check_teacher(settings, stage) if qat_epochs and stage.fine_tuning is not None else None
    if pareto:
        members = sorted(path.parent for path in (best.parent / FRONT_DIR).glob("*/result.json"))
        if not members:
            raise TunerError(f"{best.parent / FRONT_DIR}: no front to deploy (search the stage with "
                             "--objectives f1,params)")
        models = [(load_model(m), load_tokenizer(str(m)), m, m / DEPLOY, read_json(m / RESULT_FILE), m / RESULT_FILE)
                  for m in members]
    else:
        models = [(model, tokenizer, best, best.parent / DEPLOY, record, best / RESULT_FILE)]
    loaded = []
    for model, tokenizer, folder, target, found, where in models:
        hyperparameters = found.get("hyperparameters", found.get("config")) if isinstance(found, dict) else None
        if qat_epochs and not (isinstance(hyperparameters, dict) and "learning_rate" in hyperparameters):
            raise TunerError(f"{where}: no hyperparameters (with learning_rate) to fine-tune it with; "
                             "deploy with --qat-epochs 0")
        loaded.append((model, tokenizer, folder, target, hyperparameters))
    return loaded, task, settings, teacher


def deploy_stage(stage, loaded: tuple, max_f1_drop: float, threads: int, latency_sentences: int,
                 qat_epochs: int = 1, echo=print) -> list[dict]:
    """Deploy what ``load_stage`` loaded: the best model into ``results/<stage>/deploy``, or each front member into
    ``results/<stage>/pareto/<name>/deploy``; returns each deploy.json record."""
    models, task, settings, teacher = loaded
    return [deploy_model(stage, model, tokenizer, folder, target, task, settings, max_f1_drop, threads,
                         latency_sentences, echo,
                         Tuning(stage, settings, hyperparameters, qat_epochs, threads, teacher))
            for model, tokenizer, folder, target, hyperparameters in models]


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Quantization-aware fine-tuning of a model being deployed (tuner.qat): its stage, the settings its search
    recorded, its hyperparameters, the epochs (0: none), the threads, and the teacher where the stage's
    fine-tuning reads one (``load_stage`` loads it)."""
    stage: object
    settings: object
    hyperparameters: dict
    epochs: int
    threads: int
    teacher: object = None

    def fine_tuned(self, model, task, tokenizer, path: Path, prepared: Path) -> dict:
        """A copy of ``model`` fine-tuned with the stage's own loss at a fraction of the rate it trained at
        (``Stage.fine_tuning``; token cross-entropy at its searched rate where the stage has none), exported to
        ``path`` and prepared for quantization at ``prepared``; returns what was done."""
        import copy

        from tuner import onnx_io, qat
        from tuner.config import train_settings
        from tuner.registry import StageContext
        from tuner.training import select_device

        device, profile = select_device(), self.settings.profile
        loss, rate = None, self.hyperparameters["learning_rate"]
        if self.stage.fine_tuning is not None:
            context = StageContext(profile=profile, task=task, seed=self.settings.trial_seed, teacher=self.teacher,
                                   vocab_size=len(tokenizer), device=device)
            loss, rate = self.stage.fine_tuning(context, model, self.hyperparameters, "length")
        tuned = copy.deepcopy(model).float()
        record = qat.fine_tune(tuned, loss, rate, self.hyperparameters, task,
                               train_settings(profile, self.epochs, self.settings.trial_seed, self.threads, device))
        onnx_io.export(tuned, path)
        onnx_io.prepare(path, prepared)
        return record


def deploy_model(stage, model, tokenizer, folder: Path, target: Path, task, settings, max_f1_drop: float,
                 threads: int, latency_sentences: int, echo=print, tuning: Tuning | None = None) -> dict:
    """Export ``model`` (saved at ``folder``), quantize, gate, measure and write ``target``; returns its
    deploy.json record. Nothing is left at ``target`` unless the whole step succeeds (the work happens in
    ``<target>.partial``)."""
    import torch

    from tuner import onnx_io
    from tuner.models import WEIGHTS_FILE, count_parameters
    from tuner.training import torch_forward

    torch.set_num_threads(threads)
    staging = target.parent / (target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        tokenizer.save_pretrained(staging)
        model.config.save_pretrained(staging)  # the labels (id2label) and shape of what the ONNX files compute
        onnx_io.export(model, staging / FLOAT_FILE)
        batch = settings.profile.eval_batch_size
        pytorch = torch_forward(model.float().eval())
        float_onnx = onnx_io.forward(onnx_io.session(staging / FLOAT_FILE, threads))
        tags = {"pytorch_float32": predictions(pytorch, task, batch)}
        formats = {"pytorch_float32": {"file": str(folder / WEIGHTS_FILE), **scores(tags["pytorch_float32"], task)},
                   "onnx_float32": {"file": FLOAT_FILE, **scores(predictions(float_onnx, task, batch), task)}}
        baseline = formats["pytorch_float32"]["validation"]
        prepared = staging / "prepared.onnx"
        onnx_io.prepare(staging / FLOAT_FILE, prepared)
        tuned = {}  # what quantization-aware fine-tuning did, where the gate needed it

        def fine_tuned():
            echo(f"{stage.name}: no whole-model recipe kept F1 within {max_f1_drop:g} points; "
                 f"quantization-aware fine-tuning for {tuning.epochs} epoch(s)")
            tuned.update(tuning.fine_tuned(model, task, tokenizer, staging / TUNED_FILE, staging / TUNED_PREPARED))
            return (staging / TUNED_FILE, staging / TUNED_PREPARED,
                    onnx_io.forward(onnx_io.session(staging / TUNED_FILE, threads)))

        search = FallbackSearch(staging / FLOAT_FILE, prepared, float_onnx, task, threads,
                                fine_tuned if tuning is not None and tuning.epochs > 0 else None)

        def quantized(how):
            candidate = staging / f"try-{len(list(staging.glob('try-*.onnx')))}.onnx"
            source, source_prepared, _ = search.sources[how.source]
            onnx_io.quantize(source, candidate, how, prepared=source_prepared,
                             calibration=search.calibration() if how.calibration else None)
            run = onnx_io.forward(onnx_io.session(candidate, threads))
            found_tags = predictions(run, task, batch)
            found = dict(scores(found_tags, task), tags=found_tags, batch_1_median_ms=latency(
                run, task.test, task.pad_token_id, TRY_LATENCY_SENTENCES, passes=1)["batch_1_median_ms"])
            echo(f"{stage.name}: {how.name}: validation F1 {found['validation']:.4f} "
                 f"({(found['validation'] - baseline) * 100 + 0.0:+.2f} points), {candidate.stat().st_size / 1e6:.1f} MB")
            return candidate, found

        tries, chosen = gate(baseline, search.candidates(), search.remembering(quantized), max_f1_drop)
        for candidate in staging.glob("try-*.onnx"):
            if chosen is not None and candidate == chosen[0]:
                candidate.rename(staging / INT8_FILE)
            else:
                candidate.unlink()
        for work in (prepared, staging / TUNED_FILE, staging / TUNED_PREPARED):
            work.unlink(missing_ok=True)
        differences = {}
        if chosen is not None:
            differences = {split: paired_bootstrap(getattr(task, split).word_tags, tags["pytorch_float32"][split],
                                                   chosen[1]["tags"][split]) for split in ("validation", "test")}
            chosen = formats["onnx_int8"] = dict({k: v for k, v in chosen[1].items() if k != "tags"},
                                                 file=INT8_FILE, quantization=chosen[2].name)
        sizes = {"pytorch_float32": (folder / WEIGHTS_FILE).stat().st_size,
                 "onnx_float32": (staging / FLOAT_FILE).stat().st_size}
        forwards = {"pytorch_float32": pytorch, "onnx_float32": float_onnx}
        if chosen is not None:
            sizes["onnx_int8"] = (staging / INT8_FILE).stat().st_size
            forwards["onnx_int8"] = onnx_io.forward(onnx_io.session(staging / INT8_FILE, threads))
        for name, run in forwards.items():
            formats[name].update(bytes=sizes[name],
                                 latency=latency(run, task.test, task.pad_token_id, latency_sentences, passes=3))
        report = {"stage": stage.name, "model": str(folder), "parameters": count_parameters(model),
                  "max_f1_drop_points": max_f1_drop,
                  "gate": f"decided on validation F1 against pytorch_float32, {len(task.validation)} sentences",
                  "int8_passed": chosen is not None, "formats": formats, "int8_tries": tries,
                  "int8_minus_float32_f1": differences, "sensitivity": search.ranked_record(),
                  "quantization_aware": tuned or None,
                  "threads": threads, "cpu": cpu_name(), "onnxruntime": onnx_io.runtime_version(),
                  "torch": torch.__version__, "latency_sentences": "the first sentences of the test split"}
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def summary_line(report: dict) -> str:
    formats = report["formats"]
    parts = [f"{name} F1 {f['validation']:.4f}/{f['test']:.4f}, {f['bytes'] / 1e6:.1f} MB, "
             f"{f['latency']['batch_1_median_ms']:.2f} ms per sentence" for name, f in formats.items()]
    line = f"deployed {report['stage']} {Path(report['model']).name} (validation/test F1): " + "; ".join(parts)
    if not report["int8_passed"]:
        worst = min(t["drop_points"] for t in report["int8_tries"])
        line += (f"\n{report['stage']}: every int8 quantization lost more than {report['max_f1_drop_points']:g} F1 "
                 f"points on validation (the least: {worst:.2f}); kept the float32 ONNX model only")
    return line


@entry_point
def main(argv=None) -> int:
    parser = results_parser("python -m tuner.deploy", __doc__)
    parser.add_argument("--stage", required=True, choices=registry.names() + ("all",),
                        help="the stage whose best model to deploy; all: every searched stage")
    parser.add_argument("--max-f1-drop", type=non_negative_float, default=0.3,
                        help="F1 points int8 may lose on validation against PyTorch float32")
    parser.add_argument("--threads", type=positive_int, default=usable_cpus(),
                        help="CPU threads of PyTorch and ONNX Runtime while scoring and timing")
    parser.add_argument("--latency-sentences", type=positive_int, default=300,
                        help="test sentences timed one at a time (and in batches of 32)")
    parser.add_argument("--pareto", action="store_true",
                        help="every member of the stage's F1-vs-size front (--objectives f1,params) instead")
    parser.add_argument("--qat-epochs", type=int_at_least(0), default=1,
                        help="epochs of quantization-aware fine-tuning where no whole-model int8 recipe passes the "
                             "gate (0: none)")
    parser.add_argument("--gate-sentences", type=positive_int,
                        help="validation sentences the int8 gate decides on (default: the whole validation split)")
    parser.add_argument("--record", type=Path, metavar="FILE",
                        help="append the int8 figures (size, batch-1 latency and test F1 against PyTorch float32) "
                             "to FILE, such as results/benchmarks.json, with the command, commit, date and machine")
    args = parser.parse_args(argv)
    command = figures.command_line("-m tuner.deploy", sys.argv[1:] if argv is None else argv)
    started = figures.provenance()
    if args.record:
        figures.check_writable(args.record, command)
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.stage == "all":
        stages = [s for s in registry.stages() if (args.results_dir / s.name / BEST).is_dir()]
        if not stages:
            raise TunerError(f"{args.results_dir}: no searched stage to deploy (run python -m tuner.run first)")
    else:
        stages = [registry.by_name(args.stage)]
    from tuner import export

    # what the exports read afterwards, checked first: every stage's record, the deployed models this run keeps
    export.check_exports(args.results_dir, deployed=() if args.pareto else tuple(stage.name for stage in stages))
    loaded = [(stage, load_stage(stage, args.results_dir, args.pareto, args.gate_sentences, args.qat_epochs))
              for stage in stages]  # all, before writing
    reports = [report for stage, found in loaded
               for report in deploy_stage(stage, found, args.max_f1_drop, args.threads, args.latency_sentences,
                                          args.qat_epochs)]
    export.write_exports(args.results_dir)  # summary.md gains the deployed rows
    if args.pareto:
        from tuner.front import add_int8_columns

        for stage in stages:
            add_int8_columns(args.results_dir / stage.name,
                             {Path(r["model"]).name: r for r in reports if r["stage"] == stage.name})
    for report in reports:
        print(summary_line(report))
    if args.record:
        figures.record([entry for report in reports for entry in deploy_figures(report, command, started)],
                       args.record)
        print(f"figures: {args.record}")
    return 0 if all(r["int8_passed"] for r in reports) else GATE_FAILED


def deploy_figures(report: dict, command: str, started: dict | None = None) -> list[dict]:
    """A deployed model's int8 figures against its PyTorch float32 model: size and batch-1 latency ratios, test F1
    points (none where no int8 recipe passed the gate)."""
    formats = report["formats"]
    if "onnx_int8" not in formats:
        return []
    base, int8 = formats["pytorch_float32"], formats["onnx_int8"]
    what = f"{report['stage']} {Path(report['model']).name}, {report['threads']} threads"
    common = dict(peer="PyTorch float32", peer_settings="safetensors weights, float32, torch's CPU threads as int8's",
                  started=started, quantization=int8["quantization"], parameters=report["parameters"])
    return [figures.headline(f"int8 size: PyTorch float32 / int8 ({what})", round(base["bytes"] / int8["bytes"], 2),
                             "x", command, goal=">= 3.5x", met=base["bytes"] / int8["bytes"] >= 3.5, **common),
            figures.headline(f"int8 batch-1 latency: PyTorch float32 / int8 ({what})",
                             round(base["latency"]["batch_1_median_ms"] / int8["latency"]["batch_1_median_ms"], 2),
                             "x", command, goal=">= 3x",
                             met=base["latency"]["batch_1_median_ms"] / int8["latency"]["batch_1_median_ms"] >= 3,
                             **common),
            figures.headline(f"int8 test F1 minus PyTorch float32's ({what})",
                             round(100 * (int8["test"] - base["test"]), 2), " points", command,
                             goal=">= -0.3 points", met=100 * (int8["test"] - base["test"]) >= -0.3,
                             validation_points=round(100 * (int8["validation"] - base["validation"]), 2), **common)]


if __name__ == "__main__":
    sys.exit(main())
