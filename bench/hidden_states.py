"""Does the hidden-state term raise small students? The same student trained with and without it, side by side.

    python bench/hidden_states.py --teacher results/teacher/best [--shapes 1x32 2x32] [--betas 0 1] [--seeds 0 1 2]
    python bench/hidden_states.py --teacher ... --quick      # smoke mode: the smoke profile, 2 epochs

For each shape (``LAYERSxE``, the small end of the F1-vs-size front) and student seed, it trains the student stage's
own ``train`` once per ``--betas`` value, everything else equal: the teacher (and its data, split and seed), the
config of the teacher folder's sibling ``student/best`` (its learning rate, weight decay, warmup, T and alpha, from
the search the README's main command ran), the sentences, and the student seed. It reports each run's best validation
F1 (the epoch a search would keep) and that epoch's test F1, and per shape the paired differences against beta 0.
The teacher's layer outputs are computed once, as a search computes them. Results: ``--output`` (markdown) and
the same name with ``.json``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import headlines  # noqa: E402
from bench.common import DEFAULT_DATA, ROOT, publish, require_conll, utc_minute  # noqa: E402

import torch  # noqa: E402

from tuner import registry  # noqa: E402
from tuner.cli import OneLineParser  # noqa: E402
from tuner.config import RunSettings, default_threads, resolve_profile, train_settings  # noqa: E402
from tuner.models import count_parameters  # noqa: E402
from tuner.task import check_teacher, load_task, stage_inputs  # noqa: E402
from tuner.training import evaluate, release_memory  # noqa: E402


def shape(text: str) -> tuple[int, int]:
    layers, _, factor = text.partition("x")
    if not (layers.isdigit() and factor.isdigit()):
        raise ValueError(text)
    return int(layers), int(factor)


def headline_entries(runs: list, teacher_size: int, command: str) -> list[dict]:
    """Per shape and nonzero beta: the mean paired validation and test F1 change against beta 0."""
    entries = []
    for layers, factor, beta in sorted({(r["layers"], r["factor_dim"], r["beta"]) for r in runs if r["beta"]}):
        pairs = [(r, z) for r in runs for z in runs if (r["layers"], r["factor_dim"], r["beta"], r["seed"]) ==
                 (layers, factor, beta, z["seed"]) and (z["layers"], z["factor_dim"], z["beta"]) == (layers, factor, 0.0)]
        val = statistics.mean(100 * (r["val_f1"] - z["val_f1"]) for r, z in pairs)
        test = statistics.mean(100 * (r["test_f1"] - z["test_f1"]) for r, z in pairs)
        share = pairs[0][0]["parameters"] / teacher_size
        entries.append(headlines.entry(
            f"hidden-state term, {layers}-layer E={factor} student ({share:.0%} of the teacher), beta {beta:g} vs 0: "
            "validation F1 change (mean of paired seeds)", round(val, 2), " points", "> 0 (raises the small end)",
            val > 0, "the same student without the term (beta 0)", "same config, teacher, sentences and seeds",
            command, test_points=round(test, 2), seeds=len(pairs)))
    return entries


def scores(rows: list, key: str) -> str:
    return ", ".join(f"{r[key]:.4f}" for r in rows)


def main(argv=None) -> int:
    parser = OneLineParser(prog="python bench/hidden_states.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="a teacher best/ folder (its sibling student/best "
                                                                     "gives the config)")
    parser.add_argument("--config", type=Path, help="a result.json whose hyperparameters to train (default: the "
                                                    "teacher folder's ../../student/best/result.json)")
    parser.add_argument("--shapes", type=shape, nargs="+", default=[(1, 32), (2, 32)], metavar="LAYERSxE")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true", help="the smoke profile, 2 epochs")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "hidden_states.md")
    args = parser.parse_args(argv)
    require_conll(parser, args.data)
    config_file = args.config or args.teacher.parent.parent / "student" / "best" / "result.json"
    if not config_file.is_file():
        parser.error(f"--config {config_file}: not found (pass the result.json of a student search)")
    if 0.0 not in args.betas:
        parser.error("--betas: include 0, the side without the term")
    base = json.loads(config_file.read_text())["hyperparameters"]
    student = registry.by_name("student")
    teacher_record = json.loads((args.teacher / "result.json").read_text())
    profile = resolve_profile("smoke", False, max_params=10**9) if args.quick else resolve_profile("cpu", False)
    settings = RunSettings(stages=(student,), trials=1, profile=profile, data=str(args.data),
                           seed=teacher_record["seed"], split=teacher_record["split"], teacher=args.teacher)
    teacher = check_teacher(settings, student)
    teacher_size = count_parameters(teacher)
    task, tokenizer = load_task(settings, teacher)
    threads = default_threads(0)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    inputs = stage_inputs(student, settings, task, teacher, len(tokenizer), {"beta": (0.0, max(args.betas))})
    prepare_seconds = time.perf_counter() - started
    runs = []
    for layers, factor in args.shapes:
        for seed in args.seeds:
            for beta in args.betas:
                release_memory()
                hparams = dict(base, num_layers=layers, factor_dim=factor, beta=beta)
                trial = train_settings(profile, student.epochs(profile), seed, threads)
                began, best = time.perf_counter(), None
                for result in student.train(hparams, task, inputs, trial):
                    if best is None or result.metrics["val_f1"] > best["val_f1"]:
                        test = evaluate(result.model, task.test, task.labels, profile.eval_batch_size,
                                        task.pad_token_id, "cpu", profile.precision)
                        best = {"val_f1": result.metrics["val_f1"], "test_f1": test["f1"],
                                "epoch": result.metrics["epoch"], "parameters": count_parameters(result.model),
                                "train_loss": result.metrics["train_loss"]}  # with the term's MSE where beta > 0
                runs.append(dict(best, layers=layers, factor_dim=factor, seed=seed, beta=beta,
                                 seconds=time.perf_counter() - began))
                print(f"{layers}x{factor} seed {seed} beta {beta:g}: val {best['val_f1']:.4f} test "
                      f"{best['test_f1']:.4f} ({runs[-1]['seconds']:.0f} s)", flush=True)
    command = (f"python bench/hidden_states.py --teacher {args.teacher} --shapes "
               f"{' '.join(f'{a}x{b}' for a, b in args.shapes)} --betas {' '.join(f'{b:g}' for b in args.betas)} "
               f"--seeds {' '.join(map(str, args.seeds))}{' --quick' if args.quick else ''}")
    lines = [f"## The hidden-state term at small sizes ({utc_minute()})", "",
             f"`{command}`; profile `{profile.name}`, "
             f"{threads} threads; config from `{config_file}` "
             f"({', '.join(f'{k}={v:.3g}' for k, v in base.items() if isinstance(v, float))}); the teacher's logits "
             f"and layer outputs took {prepare_seconds:.0f} s once.", "",
             "| shape | share of the teacher | beta | val F1 per seed | test F1 per seed | val minus beta 0 (mean) "
             "| test minus beta 0 (mean) | seconds a run (median) |", "|---|---|---|---|---|---|---|---|"]
    for layers, factor in args.shapes:
        at = {beta: [r for r in runs if (r["layers"], r["factor_dim"], r["beta"]) == (layers, factor, beta)]
              for beta in args.betas}
        for beta, rows in at.items():
            dv = [100 * (r["val_f1"] - z["val_f1"]) for r, z in zip(rows, at[0.0])]
            dt = [100 * (r["test_f1"] - z["test_f1"]) for r, z in zip(rows, at[0.0])]
            lines.append(f"| {layers} layers, E={factor} | {rows[0]['parameters'] / teacher_size:.0%} | {beta:g} | "
                         f"{scores(rows, 'val_f1')} | {scores(rows, 'test_f1')} | "
                         f"{statistics.mean(dv):+.2f} ({', '.join(f'{d:+.2f}' for d in dv)}) | "
                         f"{statistics.mean(dt):+.2f} ({', '.join(f'{d:+.2f}' for d in dt)}) | "
                         f"{statistics.median(r['seconds'] for r in rows):.0f} |")
    headlines.update(headline_entries(runs, teacher_size, command),
                     args.output.with_name("benchmarks.json"))
    publish(args.output, "\n".join(lines) + "\n", runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
