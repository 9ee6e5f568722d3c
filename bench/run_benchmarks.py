"""Benchmark tuner against the standard Hugging Face way of doing the same work, side by side, in one run.

    python bench/run_benchmarks.py [--repeats 3] [--quick]      # or: python -m bench peers ...

Every repeat runs, on the same sentences (report split, seeded subsample), model (packaged MiniLM),
trial count, epochs, batch size (16) and search space:

1. teacher search: `python -m tuner.run --stage teacher` vs Trainer.hyperparameter_search(backend="ray");
2. student search (teacher logits computed once per search) vs online distillation (teacher run every step);
3. one epoch of tuner.training.fit vs the Trainer: real tokens/s, sentences/s and the F1 the epoch reached;
4. the share of tuner's search time spent outside training and evaluation;
5. training FLOP/s (6 x non-embedding parameters x tokens/s) against a matmul's FLOP/s (float32, bf16);
6. levers on fit's training step: bf16 autocast, torch.compile (fp32 and bf16), two 1-thread processes.

Each is measured against each peer of --peers (bench/hf_peer.py): the Hugging Face defaults, and the same tools
tuned as an expert would; the report leads with every headline ratio against both.

Each measurement is its own process (bench/probes.py, bench/hf_peer.py, tuner.run). The report is written to
results/peers.md (with --quick, to a temporary folder) and printed; the headline ratios go through tuner.figures
to benchmarks.json beside it (--record).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (BATCH_SIZE, BATCHINGS, COMPILE_BACKENDS, DEFAULT_DATA, LEVERS, PEERS, ROOT,  # noqa: E402
                          BenchError, OneLineParser, command_line, output_flags, positive_int, record_figures,
                          require_conll, settle_outputs, utc_minute)
from tuner.figures import headline  # noqa: E402
from tuner.timing import cpu_name  # noqa: E402

# The cpu profile's sizes (3,000 train and 500 validation sentences, 3 epochs, 4 trials): at these the F1s mean
# something and ASHA has rungs to stop trials at. A repeat takes about 35 minutes on an idle 2-core machine.
FULL = {"train_sentences": 3000, "eval_sentences": 500, "epochs": 3, "trials": 4, "repeats": 3, "lever_steps": 60,
        "compile_backend": "inductor"}
# --quick checks the plumbing: torch.compile through dynamo's graph capture, without AOTAutograd or inductor
QUICK = {"train_sentences": 64, "eval_sentences": 32, "epochs": 1, "trials": 2, "repeats": 1, "lever_steps": 2,
         "compile_backend": "eager"}
QUICK_TEST_SENTENCES = 32
BENCH = Path(__file__).resolve().parent
F1_TOLERANCE = 0.005  # "equal F1": within half a point


# --- running the steps ------------------------------------------------------------------------------------------

STEP_ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def run_step(name: str, argv: list, logs: Path) -> float:
    """Run one measurement process with its output in ``logs/<name>.log``; returns its wall seconds."""
    log = logs / f"{name}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call([str(a) for a in argv], cwd=ROOT, env=STEP_ENV, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise BenchError(f"step {name} exited with {code}: {lines[-1] if lines else 'no output'} (log: {log})")
    return time.perf_counter() - started


def sizes(args) -> list:
    return ["--data", args.data, "--train-sentences", args.train_sentences, "--eval-sentences",
            args.eval_sentences, "--epochs", args.epochs, "--seed", args.seed]


def tuner_search(stage: str, args, results: Path, logs: Path, teacher: Path | None = None, *extra) -> float:
    argv = [sys.executable, "-m", "tuner.run", "--stage", stage, "--profile", "cpu", "--model", "minilm",
            "--batch-size", BATCH_SIZE, "--trials", args.trials, "--results-dir", results, "--quiet", *sizes(args),
            "--student-epochs", args.epochs]  # the cpu profile's student runs longer; here both sides run --epochs
    if args.quick:  # the best model's test score is no figure here: --quick scores a few sentences, not 1,404
        argv += ["--test-sentences", QUICK_TEST_SENTENCES]
    if teacher is not None:
        argv += ["--teacher", teacher]
    return run_step(f"tuner-{stage}", argv + list(extra), logs)


def measure(script: str, command: str, args, work: Path, *extra, name: str | None = None) -> dict:
    """Run ``bench/<script>.py <command>`` and return its JSON record plus the process's wall time."""
    name = name or f"{script}-{command}"
    out = work / f"{name}.json"
    wall = run_step(name, measurement_argv(script, command, args, out, extra), work / "logs")
    return dict(json.loads(out.read_text()), process_wall_seconds=wall)


def measurement_argv(script: str, command: str, args, out: Path, extra) -> list:
    return [str(a) for a in [sys.executable, BENCH / f"{script}.py", command, *sizes(args), "--out", out, *extra]]


def measure_together(script: str, command: str, args, work: Path, copies: int, *extra) -> dict:
    """``copies`` processes of the same measurement at once (say two 1-thread trials sharing 2 cores): their
    summed rate, and how much of the longest timed window all of them overlapped."""
    outs = [work / f"{script}-{command}-together-{i}.json" for i in range(copies)]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context((work / "logs" / f"{out.stem}.log").open("w")) for out in outs]
        procs = [subprocess.Popen(measurement_argv(script, command, args, out, extra), cwd=ROOT, env=STEP_ENV,
                                  stdout=log, stderr=subprocess.STDOUT) for out, log in zip(outs, logs)]
        codes = [proc.wait() for proc in procs]
    if any(codes):
        raise BenchError(f"{script} {command} x{copies} exited with {codes} (logs: {work / 'logs'})")
    records = [json.loads(out.read_text()) for out in outs]
    overlap = min(r["finished"] for r in records) - max(r["started"] for r in records)
    return {"tokens_per_second": sum(r["tokens_per_second"] for r in records), "copies": copies,
            "threads": records[0]["threads"], "steps": records[0]["steps"],
            "overlap": max(0.0, overlap) / max(r["seconds"] for r in records),
            "warmup_seconds": max(r["warmup_seconds"] for r in records),
            "first_loss": records[0]["first_loss"], "last_loss": records[0]["last_loss"],
            "process_wall_seconds": time.perf_counter() - started}


SUMMED = ("time_this_iter_s", "train_seconds", "eval_seconds", "checkpoint_seconds", "report_seconds")


def trial_epochs(search_dir: Path) -> list:
    """Per trial, one result line per epoch from Ray's result.json: a rung epoch's second report (``rereport``,
    which carries its checkpoint) is folded into the first, its seconds added."""
    trials = []
    for path in sorted(search_dir.glob("*/result.json")):
        epochs = []
        for line in (json.loads(text) for text in path.read_text().splitlines() if text.strip()):
            if line.get("rereport") and epochs:
                first = epochs.pop()
                line = {**first, **line, **{key: first.get(key, 0.0) + line.get(key, 0.0) for key in SUMMED}}
            if "train_seconds" in line:
                epochs.append(line)
        trials.append(epochs)
    return [t for t in trials if t]


def one_repeat(index: int, args, work: Path) -> dict:
    """Every measurement once (with --levers-only, section 6's); returns the numbers the tables are built from."""
    work.mkdir(parents=True)
    (work / "logs").mkdir()
    args = argparse.Namespace(**dict(vars(args), seed=index))  # both sides of a repeat share its seed
    levers = {} if args.no_levers else lever_measurements(args, work)
    record = {"steps": {}} if args.levers_only else comparisons(index, args, work)
    if levers:
        record["steps"]["training-step levers"] = sum(r["process_wall_seconds"] for r in levers.values())
    return dict(record, levers=levers)


def lever_measurements(args, work: Path) -> dict:
    levers = {variant: measure("probes", "steps", args, work, "--variant", variant, "--steps", args.lever_steps,
                               *(["--compile-backend", args.compile_backend] if variant.startswith("compile") else []),
                               name=f"steps-{variant}")
              for variant in LEVERS}
    levers["fp32, 2 processes"] = measure_together("probes", "steps", args, work, 2, "--variant", "fp32",
                                                   "--threads", 1, "--steps", args.lever_steps)
    return levers


def comparisons(index: int, args, work: Path) -> dict:
    """Sections 1 to 5 against each peer of ``args.peers``: the searches, distillation, throughput, overhead and
    the matmul. The tuned peer's batching is the better of its two in this repeat's throughput step."""
    logs = work / "logs"
    results = work / "tuner"
    peer_first = index % 2 == 1  # alternate which side goes first, so slow drift of the machine evens out
    teacher_wall = tuner_search("teacher", args, results, logs)
    # The default peer trains the very configs tuner's Optuna sampled so the F1 gap measures the
    # engines (training loop, ASHA's stops), not two draws of 4 random configs. The tuned one runs its own TPE.
    sampled = sampled_configs(results / "teacher" / "trials.csv")
    configs = work / "teacher-configs.json"
    configs.write_text(json.dumps(sampled))
    teacher = results / "teacher" / "best"
    student_wall = tuner_search("student", args, results, logs, teacher)
    student = results / "student" / "best"
    logits = measure("probes", "teacher-logits", args, work, "--teacher", teacher)
    tuner_fit, peer_fits = run_pair([lambda: measure("probes", "throughput", args, work),
                                     lambda: throughput_fits(args, work)], peer_first)
    tuner_fp32 = measure("probes", "throughput", args, work, "--precision", "fp32", name="probes-throughput-fp32")
    matmul = measure("probes", "matmul", args, work)
    steps = {"tuner teacher search": teacher_wall, "tuner student search": student_wall,
             "teacher logits": logits["process_wall_seconds"], "tuner fit epoch": tuner_fit["process_wall_seconds"],
             "tuner fit epoch, fp32": tuner_fp32["process_wall_seconds"], "matmul": matmul["process_wall_seconds"]}
    peers = {}
    for peer in args.peers:
        fits = peer_fits[peer]
        batching = args.tuned_batching if peer == "tuned" and args.tuned_batching != "auto" else better_batching(fits)
        flags = ["--peer", peer, "--batching", batching]
        extra = ["--trials", args.trials] if peer == "tuned" else ["--configs", configs]
        hf_search = measure("hf_peer", "search", args, work, *flags, *extra, name=f"hf_peer-search-{peer}")
        if peer == "default" and sorted(c["learning_rate"] for c in hf_search["configs"]) != sorted(
                c["learning_rate"] for c in sampled):
            raise BenchError(f"the default peer's search trained other configs than {configs}")
        online = measure("hf_peer", "distill", args, work, "--teacher", teacher, "--student", student, *flags,
                         name=f"hf_peer-distill-{peer}")
        peers[peer] = {"fits": fits, "batching": batching, "search": hf_search, "online": online}
        steps.update({f"HF {peer}: search": hf_search["process_wall_seconds"],
                      f"HF {peer}: online distillation": online["process_wall_seconds"],
                      **{f"HF {peer}: Trainer epoch, {b}": fit["process_wall_seconds"] for b, fit in fits.items()}})
    return {"steps": steps, "teacher": search_record(results / "teacher", teacher_wall),
            "student": search_record(results / "student", student_wall), "teacher_logits": logits,
            "tuner_fit": tuner_fit, "tuner_fp32_fit": tuner_fp32, "matmul": matmul, "peers": peers}


def throughput_fits(args, work: Path) -> dict:
    """One Trainer epoch per peer and batching: the default peer at its default (random batches), the tuned one
    with both, to pick its batching."""
    return {peer: {b: measure("hf_peer", "throughput", args, work, "--peer", peer, "--batching", b,
                              name=f"hf_peer-throughput-{peer}-{b}")
                   for b in (BATCHINGS if peer == "tuned" else ("random",))}
            for peer in args.peers}


def better_batching(fits: dict) -> str:
    """The faster batching when the F1s its epoch reached lie within F1_TOLERANCE of each other; else the one with
    the higher F1 (equal F1 first, then speed)."""
    if len(fits) == 1:
        return next(iter(fits))
    f1s = [fit["val_f1"] for fit in fits.values()]
    if max(f1s) - min(f1s) <= F1_TOLERANCE:
        return max(fits, key=lambda b: fits[b]["tokens_per_second"])
    return max(fits, key=lambda b: fits[b]["val_f1"])


def sampled_configs(trials_csv: Path) -> list:
    """The hyperparameters of every trial of a tuner search, from its trials.csv."""
    with trials_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{key.split("/", 1)[1]: float(value) for key, value in row.items() if key.startswith("config/")}
            for row in rows]


def run_pair(steps: list, reverse: bool) -> list:
    order = [1, 0] if reverse else [0, 1]
    done = {i: steps[i]() for i in order}
    return [done[0], done[1]]


def search_record(stage_dir: Path, process_wall: float) -> dict:
    result = json.loads((stage_dir / "best" / "result.json").read_text())
    return {"process_wall_seconds": process_wall, "search_wall_seconds": result["search_wall_seconds"],
            "best_val_f1": result["val_f1"], "trials": trial_epochs(stage_dir / "search")}


# --- the numbers per repeat: keys "tuner_<what>" and "<peer>_<what>" --------------------------------------------

def teacher_numbers(r: dict, epochs: int) -> dict:
    tuner = r["teacher"]
    numbers = {"tuner_search": tuner["search_wall_seconds"], "tuner_process": tuner["process_wall_seconds"],
               "tuner_epochs": sum(len(t) for t in tuner["trials"]), "tuner_f1": tuner["best_val_f1"]}
    for peer, sides in r["peers"].items():
        hf = sides["search"]
        numbers.update({f"{peer}_search": hf["search_wall_seconds"], f"{peer}_process": hf["process_wall_seconds"],
                        f"{peer}_epochs": hf["epochs_run"], f"{peer}_f1": hf["best_val_f1"]})
    return numbers


def full_length(trials: list, epochs: int) -> list:
    """The trials (per-epoch lines from ``trial_epochs``) that ran every epoch."""
    return [t for t in trials if len(t) == epochs]


def online_epoch(online: dict) -> tuple[float, float]:
    """An online distillation run's (``hf_peer.py distill``) mean training seconds per epoch, and the part of them
    its teacher's forward took (NaN for a run recorded before it was timed)."""
    seconds = online["epoch_seconds"]
    return statistics.mean(seconds), online.get("teacher_forward_seconds", float("nan")) / len(seconds)


def student_numbers(r: dict, epochs: int) -> dict:
    trials = r["student"]["trials"]
    full = [t[-1]["time_total_s"] for t in full_length(trials, epochs)]
    numbers = {"tuner_trial": statistics.mean(full) if full else float("nan"),
               "tuner_epoch": statistics.mean(line["time_this_iter_s"] for t in trials for line in t),
               "tuner_train": statistics.mean(line["train_seconds"] for t in trials for line in t),
               "logits": r["teacher_logits"]["seconds"],
               "tuner_amortized": r["student"]["search_wall_seconds"] / len(trials),
               "tuner_f1": r["student"]["best_val_f1"]}
    numbers["tuner_student"] = numbers["tuner_train"]  # tuner's epoch has no teacher pass: it is the student's step
    for peer, sides in r["peers"].items():
        online = sides["online"]
        train, teacher = online_epoch(online)
        numbers.update({f"{peer}_trial": online["trial_wall_seconds"],
                        f"{peer}_epoch": online["trial_wall_seconds"] / epochs,
                        f"{peer}_train": train, f"{peer}_f1": online["best_val_f1"],
                        f"{peer}_teacher": teacher, f"{peer}_teacher_share": teacher / train,
                        f"{peer}_student": train - teacher})
    return numbers


def fit_sides(r: dict) -> dict:
    """Every one-epoch throughput measurement of a repeat by side: tuner's two, each peer's batchings, and each
    peer's chosen batching again as ``<peer>_chosen``."""
    sides = {"tuner": r["tuner_fit"], "tuner_fp32": r["tuner_fp32_fit"]}
    for peer, measured in r["peers"].items():
        sides.update({f"{peer}_{b}": fit for b, fit in measured["fits"].items()})
        sides[f"{peer}_chosen"] = measured["fits"][measured["batching"]]
    return sides


def throughput_numbers(r: dict, epochs: int) -> dict:
    numbers = {}
    for side, fit in fit_sides(r).items():
        numbers.update({f"{side}_tokens": fit["tokens_per_second"], f"{side}_sentences": fit["sentences_per_second"],
                        f"{side}_seconds": fit["train_seconds"], f"{side}_f1": fit.get("val_f1", float("nan")),
                        f"{side}_padding": 1 - fit["real_tokens"] / fit["padded_tokens"]})
    return numbers


OVERHEAD_PARTS = [("setup_seconds", "model and optimizer built (first epoch)"),
                  ("checkpoint_seconds", "checkpoints written"),
                  ("report_seconds", "tune.report (the scheduler's decision; Tune copies the checkpoint)")]


def overhead_numbers(r: dict, epochs: int) -> dict:
    """Per trial (median over trials): its wall time, the share outside train + eval, and where that share went."""
    trials = r["teacher"]["trials"]
    shares = {"trial": [], "rest": [], **{key: [] for key, _ in OVERHEAD_PARTS}}
    walls, work = [], 0.0
    for lines in trials:
        total = lines[-1]["time_total_s"]
        inner = sum(line["train_seconds"] + line["eval_seconds"] for line in lines)
        parts = {key: sum(line.get(key, 0.0) for line in lines) for key, _ in OVERHEAD_PARTS}
        walls.append(total)
        work += inner
        shares["trial"].append(1 - inner / total)
        for key, seconds in parts.items():
            shares[key].append(seconds / total)
        shares["rest"].append((total - inner - sum(parts.values())) / total)
    tuner = r["teacher"]
    numbers = {"trial_wall": statistics.median(walls), "work": work, "search_wall": tuner["search_wall_seconds"],
               "search_share": 1 - work / tuner["search_wall_seconds"],
               "process_wall": tuner["process_wall_seconds"], "process_share": 1 - work / tuner["process_wall_seconds"]}
    numbers.update({f"{key}_share": statistics.median(values) for key, values in shares.items()})
    return numbers


def machine_numbers(r: dict, epochs: int) -> dict:
    peaks = {False: r["matmul"]["flops_per_second"], True: r["matmul"]["bf16_flops_per_second"]}
    numbers = {"matmul": peaks[False] / 1e9, "bf16_matmul": peaks[True] / 1e9}
    for side, fit in fit_sides(r).items():
        flops = 6 * fit["non_embedding_parameters"] * fit["tokens_per_second"]
        numbers.update({f"{side}_gflops": flops / 1e9, f"{side}_fraction": flops / peaks[bool(fit.get("bf16"))]})
    return numbers


def lever_numbers(r: dict) -> dict:
    levers = r["levers"]
    base = levers["fp32"]["tokens_per_second"]
    numbers = {}
    for name, lever in levers.items():
        numbers.update({f"{name}|tokens": lever["tokens_per_second"],
                        f"{name}|ratio": lever["tokens_per_second"] / base,
                        f"{name}|warmup": lever["warmup_seconds"], f"{name}|first_loss": lever["first_loss"],
                        f"{name}|last_loss": lever["last_loss"]})
        if "overlap" in lever:
            numbers[f"{name}|overlap"] = lever["overlap"]
    return numbers


# --- tables -----------------------------------------------------------------------------------------------------

def stats(values: list) -> tuple:
    return statistics.median(values), min(values), max(values)


def cell(values: list, spec: str, unit: str = "") -> str:
    median, low, high = stats(values)
    text = format(median, spec) + unit
    return text if len(values) == 1 else f"{text} ({format(low, spec)}{unit} to {format(high, spec)}{unit})"


def ratio(a: list, b: list) -> str:
    return f"{statistics.median(a) / statistics.median(b):.2f}x"


def points(a: list, b: list) -> str:
    return f"{100 * (statistics.median(a) - statistics.median(b)):+.1f} points"


def table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def column(per_repeat: list, key: str) -> list:
    return [numbers[key] for numbers in per_repeat]


def peer_rows(n: list, peers: list, rows: list) -> list:
    """Rows of (label, key, format, how the peer compares): tuner's cell, each peer's, then each peer against
    tuner (``how(peer, tuner)``)."""
    return [[label, cell(column(n, f"tuner_{key}"), spec), *(cell(column(n, f"{p}_{key}"), spec) for p in peers),
             *(how(column(n, f"{p}_{key}"), column(n, f"tuner_{key}")) for p in peers)]
            for label, key, spec, how in rows]


def peer_label(peer: str) -> str:
    return f"HF {peer}"


FIT_LABELS = {"tuner": "tuner fit (default precision)", "tuner_fp32": "tuner fit, fp32",
              "default_random": "HF default (random batches)", "tuned_random": "HF tuned, random batches",
              "tuned_length": "HF tuned, group_by_length"}


def comparison_sections(repeats: list, epochs: int) -> list:
    """Sections 1 to 5: (title, intro, markdown table) per comparison."""
    peers = list(repeats[0]["peers"])
    labels = [peer_label(p) for p in peers]
    versus = [f"{label} vs tuner" for label in labels]
    n = [teacher_numbers(r, epochs) for r in repeats]
    teacher = table(["", "tuner", *labels, *versus], peer_rows(n, peers, [
        ["search wall time, s (Tune run only)", "search", ".1f", ratio],
        ["whole command wall time, s", "process", ".1f", ratio],
        ["trial-epochs trained", "epochs", ".0f", ratio],
        ["best validation F1", "f1", ".4f", points]]))
    n = [student_numbers(r, epochs) for r in repeats]
    student = table(["", "tuner (teacher logits once)", *(f"online, {label}" for label in labels),
                     *(f"online, {v}" for v in versus)],
                    peer_rows(n, peers, [["wall time of a full-length trial, s", "trial", ".1f", ratio],
                                         ["wall time per trial-epoch, s", "epoch", ".1f", ratio],
                                         ["training time per epoch, s", "train", ".1f", ratio],
                                         ["- without the online run's teacher forward (the student's step), s",
                                          "student", ".1f", ratio]])
                    + [["- the online run's teacher forward, share of its epoch", "",
                        *(cell(column(n, f"{p}_teacher_share"), ".1%") for p in peers), *[""] * len(peers)]]
                    + peer_rows(n, peers, [["best validation F1", "f1", ".4f", points]])
                    + [["teacher logits, once per search, s", cell(column(n, "logits"), ".1f"), *[""] * 2 * len(peers)],
                       ["search wall time / trials, s", cell(column(n, "tuner_amortized"), ".1f"),
                        *[""] * 2 * len(peers)]])
    n = [throughput_numbers(r, epochs) for r in repeats]
    sides = [side for side in fit_sides(repeats[0]) if not side.endswith("_chosen")]
    hf_sides = [side for side in sides if not side.startswith("tuner")] + [f"{p}_chosen" for p in peers]
    chosen = {p: ", ".join(r["peers"][p]["batching"] for r in repeats) for p in peers}
    measured = table(["", *(FIT_LABELS.get(side, side) for side in sides)], [
        [label, *(cell(column(n, f"{side}_{key}"), spec) for side in sides)]
        for label, key, spec in [("real tokens / s", "tokens", ".0f"), ("sentences / s", "sentences", ".2f"),
                                 ("epoch training time, s", "seconds", ".1f"),
                                 ("padding share of batch tokens", "padding", ".1%"),
                                 ("validation F1 after the epoch", "f1", ".4f")]])
    against = table(["tuner against", "tuner fit: real tokens / s ratio", "F1, tuner - HF",
                     "tuner fit, fp32: ratio", "F1, tuner - HF"], [
        [FIT_LABELS.get(side, f"{peer_label(side[:-7])} at its chosen batching ({chosen[side[:-7]]})"),
         *(f(column(n, f"{mine}_{key}"), column(n, f"{side}_{key}"))
           for mine in ("tuner", "tuner_fp32") for f, key in ((ratio, "tokens"), (points, "f1")))]
        for side in hf_sides])
    throughput = measured + "\n\n" + against
    n = [overhead_numbers(r, epochs) for r in repeats]
    overhead = table(["", "seconds", "outside training and evaluation"], [
        ["a trial (median trial)", cell(column(n, "trial_wall"), ".1f"), cell(column(n, "trial_share"), ".1%")],
        *[[f"- of which {label}", "", cell(column(n, f"{key}_share"), ".1%")] for key, label in OVERHEAD_PARTS],
        ["- of which the rest (Ray: the trial's start, its inputs from the object store, results)", "",
         cell(column(n, "rest_share"), ".1%")],
        ["the search (Tune run)", cell(column(n, "search_wall"), ".1f"), cell(column(n, "search_share"), ".1%")],
        ["the whole command", cell(column(n, "process_wall"), ".1f"), cell(column(n, "process_share"), ".1%")],
        ["sum of the trials' train + eval", cell(column(n, "work"), ".1f"), ""]])
    n = [machine_numbers(r, epochs) for r in repeats]
    fits = fit_sides(repeats[0])
    machine = table(["", "GFLOP/s", "fraction of its precision's matmul"], [
        ["float32 2048^3 matmul", cell(column(n, "matmul"), ".1f"), "100%"],
        ["bf16 2048^3 matmul", cell(column(n, "bf16_matmul"), ".1f"), "100%"],
        *[[f"{FIT_LABELS.get(side, side)} training step ({'bf16' if fits[side].get('bf16') else 'float32'})",
           cell(column(n, f"{side}_gflops"), ".2f"), cell(column(n, f"{side}_fraction"), ".1%")] for side in sides]])
    return [
        ("1. Teacher search", "`python -m tuner.run --stage teacher` (Optuna TPE + ASHA, a checkpoint per epoch) "
         "vs `Trainer.hyperparameter_search(backend=\"ray\")` (the HF NER recipe: first-sub-token labels as tuner's "
         "default, DataCollatorForTokenClassification, seqeval F1, evaluation each epoch). The default peer runs "
         "FIFO and trains the configs tuner's TPE sampled (Ray's BasicVariantGenerator with them as "
         "points_to_evaluate), so the two differ only in the engine: training loop, and ASHA stopping trials early. "
         "The tuned peer runs the search tuner runs with Ray's and Optuna's own classes (OptunaSearch, TPE at the "
         "same seed and start-up trials, ASHA with the same rungs, the same trial count), bf16 where tuner uses it, "
         "adamw_torch_fused, no checkpoints, and the batching chosen in 3. "
         "F1: best over all trials and epochs; ratio: HF / tuner; difference: HF minus tuner.", teacher),
        ("2. Student search vs online distillation", "tuner's student trials read teacher logits computed once "
         "per search and train random batches unpadded (tuner's student default); the online runs are Trainers "
         "whose compute_loss runs the teacher on every step (padded batches: random for the default peer; the "
         "tuned one with bf16 where tuner uses it, adamw_torch_fused and the batching chosen in 3.), with tuner's "
         "best student "
         "config, initialisation (cut_student) and distillation_loss, scored by tuner's "
         "evaluate each epoch. Ratio: online / tuner.", student),
        ("3. Training throughput (one epoch, teacher model)", "tuner.training.fit (its default: random batches "
         "trained unpadded; padding counts the attention groups' pads) at its default precision (auto: bf16 autocast "
         "where the CPU or GPU has native bf16) and forced to fp32, vs the Trainer: the default peer (float32, random "
         "batches) and the tuned one (bf16 where tuner uses it, adamw_torch_fused) with random batches and with "
         "group_by_length; "
         f"batch size {BATCH_SIZE}, the same learning rate, weight decay and warmup on every side, real (non-pad) "
         "tokens counted on both sides, then the validation F1 the epoch reached. The tuned peer's batching for 1. "
         "and 2. is the faster of its two where their F1s lie within "
         f"{100 * F1_TOLERANCE:.1f} points, else the one with the higher F1 (unless --tuned-batching fixed it); it "
         "ran, per repeat: "
         f"{'; '.join(f'{p}: {c}' for p, c in chosen.items())}. Second table: tuner / HF.", throughput),
        ("4. tuner's overhead (teacher search)", "Time outside the trials' `train_seconds + eval_seconds`: per "
         "trial against Ray's `time_total_s`, split by the timings each trial reports (`setup_seconds`, "
         "`checkpoint_seconds`, `report_seconds`), each share the median over trials; for the search against its "
         "wall time, for the command against the process's wall time (imports, data, Ray start, test evaluation, "
         "saving the best model).", overhead),
        ("5. Against the machine", "Training FLOP/s = 6 x non-embedding parameters x real tokens/s (from 3.), "
         "against a matmul of the step's precision timed in the same run with the same thread count.", machine),
    ]


# --- the headline ratios against each peer ----------------------------------------------------------------------

PEER_SETTINGS = {
    "default": "the Hugging Face defaults: an fp32 Trainer (transformers 5's default optimizer, adamw_torch_fused), "
               "random padded batches, hyperparameter_search(backend='ray') with FIFO over tuner's sampled configs, "
               "online distillation running the teacher every step",
    "tuned": "as an expert would set it up: a {precision} Trainer (bf16 wherever tuner's auto precision uses it), "
             "optim=adamw_torch_fused, the better of random and group_by_length batches at equal F1, "
             "hyperparameter_search(backend='ray') with OptunaSearch (TPE, tuner's seed and start-up trials) and "
             "ASHA (tuner's rungs), no checkpoints; online distillation with the same settings"}
GOALS = {"teacher": 1.5, "student": 3.0, "throughput": 1.3, "bf16_step": 0.35}  # against the tuned peer (issue 20)


def peer_settings(peer: str, repeats: list) -> str:
    """PEER_SETTINGS[peer], with the precision the tuned peer's search ran at."""
    bf16 = repeats[0]["peers"][peer]["search"].get("bf16")
    return PEER_SETTINGS[peer].format(precision="bf16" if bf16 else "float32")


def medians(n: list) -> dict:
    return {key: statistics.median(column(n, key)) for key in n[0]}


def headline_figures(repeats: list, epochs: int) -> list:
    """Per headline and peer: (key, peer, ratio or fraction, F1 difference tuner - peer in points or None)."""
    t = medians([teacher_numbers(r, epochs) for r in repeats])
    s = medians([student_numbers(r, epochs) for r in repeats])
    f = medians([throughput_numbers(r, epochs) for r in repeats])
    m = medians([machine_numbers(r, epochs) for r in repeats])
    figures = []
    for p in repeats[0]["peers"]:
        figures += [("teacher", p, t[f"{p}_search"] / t["tuner_search"], 100 * (t["tuner_f1"] - t[f"{p}_f1"])),
                    ("student", p, s[f"{p}_trial"] / s["tuner_trial"], 100 * (s["tuner_f1"] - s[f"{p}_f1"])),
                    ("throughput", p, f["tuner_tokens"] / f[f"{p}_chosen_tokens"],
                     100 * (f["tuner_f1"] - f[f"{p}_chosen_f1"])),
                    ("bf16_step", p, m["tuner_fraction"], None)]
    return figures


def met(key: str, value: float, f1_points: float | None) -> bool:
    return value >= GOALS[key] and (key == "bf16_step" or f1_points is None or f1_points >= -100 * F1_TOLERANCE)


HEADLINE_TEXT = {  # key: (table label, goal text)
    "teacher": ("teacher search, HF hyperparameter_search / tuner wall time (F1 tuner - HF)",
                f">= {GOALS['teacher']}x, F1 within {100 * F1_TOLERANCE:.1f} points"),
    "student": ("student trial, online distillation / tuner full-length trial (F1 tuner - online)",
                f">= {GOALS['student']:.0f}x, F1 within {100 * F1_TOLERANCE:.1f} points"),
    "throughput": ("training throughput, tuner fit / Trainer real tokens/s (F1 after the epoch, tuner - HF)",
                   f">= {GOALS['throughput']}x at equal F1"),
    "bf16_step": ("tuner's bf16 training step against the machine's bf16 matmul (FLOP/s)",
                  f">= {100 * GOALS['bf16_step']:.0f}%")}


def lead_section(repeats: list, epochs: int) -> tuple:
    """Section 0: each headline against the default peer and the tuned one, the goal read against the tuned one."""
    peers = list(repeats[0]["peers"])
    figures = {(key, p): (value, f1) for key, p, value, f1 in headline_figures(repeats, epochs)}
    rows = []
    for key, (label, goal) in HEADLINE_TEXT.items():
        cells = []
        for p in peers:
            value, f1 = figures[key, p]
            cells.append(f"{100 * value:.1f}%" if key == "bf16_step" else
                         f"**{value:.2f}x**" + ("" if f1 is None else f" ({f1:+.2f} points)"))
        verdict = ("yes" if met(key, *figures[key, "tuned"]) else "no") if "tuned" in peers else "n/a (tuned not run)"
        rows.append([label, goal, *cells, verdict])
    body = table(["measure", "goal (against the tuned peer)", *(f"against the {p} peer" for p in peers), "met?"], rows)
    settings = "; ".join(f"**{p}**: {peer_settings(p, repeats)}" for p in peers)
    return ("Headline ratios against each peer", "Medians over the repeats; the bf16 row is tuner's own step "
            f"(the same in every column). Settings each peer used: {settings}.", body)


def headline_entries(args, repeats: list, epochs: int) -> list:
    """The headline figures: per peer, the three ratios under one subject (the README gives them a row per peer),
    then tuner's own bf16 step once. The goals are read against the tuned peer only."""
    n = len(repeats)
    what = {"teacher": "teacher search, HF hyperparameter_search / tuner wall time",
            "student": "student trial, online distillation / tuner full-length trial",
            "throughput": "training throughput, tuner fit / Trainer real tokens/s"}
    entries = []
    for key, peer, value, f1 in headline_figures(repeats, epochs):
        if key == "bf16_step":
            if peer == args.peers[-1]:  # tuner's own figure: once
                entries.append(headline(
                    "training step FLOP/s against the machine's matmul of the same precision (bf16)",
                    round(100 * value, 3), "%", args.command, goal=HEADLINE_TEXT[key][1], met=met(key, value, f1),
                    peer="the machine's bf16 matmul", peer_settings="2048^3 bf16 matmul, same threads", seeds=n,
                    started=args.started))
            continue
        subject = (f"against the {peer} Hugging Face peer, cpu profile, {args.trials} trials, median of {n} "
                   f"seed{'s' if n > 1 else ''}")
        tuned = peer == "tuned"
        entries.append(headline(
            f"{what[key]} ({subject})", round(value, 3), "x", args.command,
            goal=HEADLINE_TEXT[key][1] if tuned else None, met=met(key, value, f1) if tuned else None, peer=peer,
            peer_settings=peer_settings(peer, repeats), seeds=n, started=args.started,
            **({} if f1 is None else {"f1_points": round(f1, 2)})))
    return entries


def lever_section(repeats: list) -> tuple:
    """Section 6: fit's training step under each lever."""
    n = [lever_numbers(r) for r in repeats]
    backend = repeats[0]["levers"]["compile"].get("compile_backend", "inductor")
    rows = []
    for name, label in [("fp32", f"fp32, one process, {repeats[0]['levers']['fp32']['threads']} threads"),
                        ("fp32, 2 processes", "fp32, two processes of 1 thread at once (two trials per node), summed"),
                        ("bf16", "bf16 autocast on the CPU (fit's default where the CPU has native bf16)"),
                        ("compile", f"torch.compile ({backend}, dynamic shapes)"),
                        ("compile-bf16", f"torch.compile ({backend}, dynamic shapes) under bf16 autocast")]:
        losses = f"{cell(column(n, f'{name}|first_loss'), '.4f')} to {cell(column(n, f'{name}|last_loss'), '.4f')}"
        rows.append([label, cell(column(n, f"{name}|tokens"), ".0f"), cell(column(n, f"{name}|ratio"), ".2f", "x"),
                     cell(column(n, f"{name}|warmup"), ".1f"), losses])
    levers = table(["training step", "real tokens / s", "vs fp32", "first 5 steps (compilation), s",
                    "loss, first to last step"], rows)
    overlap = cell([numbers["fp32, 2 processes|overlap"] for numbers in n], ".0%")
    return ("6. Levers on the training step", "The same first batches of fit's length-grouped epoch (`--batches "
            "length`: the padded HF forward; teacher model, "
            f"batch size {BATCH_SIZE}), timed after 5 warm-up steps, one process per lever; the two-process row runs "
            "two 1-thread processes at once, as two trials per node would, and sums their rates (their timed "
            f"windows overlapped {overlap}).", levers)


def sections(repeats: list, epochs: int) -> list:
    """(title, intro, markdown table) per section the run measured, then each process's wall time."""
    steps = table(["process", "wall time, s"], [[name, cell([r["steps"][name] for r in repeats], ".1f")]
                                                 for name in repeats[0]["steps"]])
    found = [lead_section(repeats, epochs), *comparison_sections(repeats, epochs)] if "teacher" in repeats[0] else []
    levers = [lever_section(repeats)] if repeats[0]["levers"] else []
    return found + levers + [("Where the run's time went", "Wall time of each measurement process, per "
                                             "repeat; sizes scale the search, distillation and epoch rows roughly "
                                             "linearly.", steps)]


# --- the report -------------------------------------------------------------------------------------------------

def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_lines() -> list:
    from importlib import metadata

    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("torch", "transformers", "ray", "optuna"))
    return [f"- machine: {os.cpu_count()} cores, {cpu_name()}, Python {platform.python_version()}",
            f"- versions: {versions}"]


def report(args, repeats: list, started: str, load_before: str, seconds: float) -> str:
    lines = ["# Benchmarks: tuner vs the standard Hugging Face way", "",
             f"- command: `{args.command}`",
             f"- run: {started}, {seconds / 60:.1f} minutes, {len(repeats)} repeat(s); cells are the median "
             "(min to max) over repeats, ratios are ratios of medians",
             *machine_lines(),
             f"- load average (1, 5, 15 min) before: {load_before}; after: {load_average()} "
             "(a loaded machine slows every number)",
             "- seeds: repeat r runs with seed r - 1 on both sides (the seeded subsample, the classifier head, "
             "the data order, dropout), so an F1 median is a median over seeds",
             f"- data: {args.data}, report split: {args.train_sentences} train and {args.eval_sentences} "
             f"validation sentences; packaged MiniLM-L6-H384; {args.epochs} epoch(s), {args.trials} trials, "
             f"batch size {BATCH_SIZE}, search space search_spaces/teacher.yaml (student.yaml for tuner's student)",
             ""]
    for title, intro, body in sections(repeats, args.epochs):
        lines += [f"## {title}", "", intro, "", body, ""]
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------------------

def peer_list(text: str) -> list:
    peers = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        name = unknown[0] if unknown else text
        raise argparse.ArgumentTypeError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
    return [p for p in PEERS if p in peers]


def parse_args(argv: list) -> argparse.Namespace:
    parser = OneLineParser(prog="python bench/run_benchmarks.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the plumbing (about 4 minutes)")
    parser.add_argument("--repeats", type=positive_int, help=f"repeats (default {FULL['repeats']}, quick 1)")
    parser.add_argument("--trials", type=positive_int, help=f"trials per search (default {FULL['trials']})")
    parser.add_argument("--epochs", type=positive_int, help=f"epochs per trial (default {FULL['epochs']})")
    parser.add_argument("--train-sentences", type=positive_int, help=f"default {FULL['train_sentences']}")
    parser.add_argument("--eval-sentences", type=positive_int, help=f"default {FULL['eval_sentences']}")
    parser.add_argument("--lever-steps", type=positive_int,
                        help=f"timed training steps per lever of section 6 (default {FULL['lever_steps']})")
    parser.add_argument("--levers-only", action="store_true", help="measure section 6 only (minutes, no searches)")
    parser.add_argument("--no-levers", action="store_true", help="skip section 6")
    parser.add_argument("--peers", type=peer_list, default=list(PEERS),
                        help=f"comma-separated peers to measure against (default {','.join(PEERS)}; see "
                             "bench/hf_peer.py)")
    parser.add_argument("--tuned-batching", choices=("auto", *BATCHINGS), default="auto",
                        help="the tuned peer's batching in its search and distillation: auto (default) picks it per "
                             "repeat from section 3's two epochs (the faster at equal F1); random or length fixes it")
    parser.add_argument("--compile-backend", choices=COMPILE_BACKENDS,
                        help=f"torch.compile's backend in section 6 (default {FULL['compile_backend']}, quick "
                             f"{QUICK['compile_backend']})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CoNLL files (train.txt)")
    output_flags(parser, "peers.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (searches, logs, JSON)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.levers_only and args.no_levers:
        parser.error("--levers-only and --no-levers leave nothing to measure")
    require_conll(parser, args.data)
    args.data = args.data.resolve()
    args.argv, args.command = argv, command_line("run_benchmarks.py", argv)
    settle_outputs(parser, args, "peers.md", args.command)
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tuner-bench-"))
    started, load_before, clock = utc_minute(), load_average(), time.time()
    repeats = []
    try:
        for index in range(args.repeats):
            print(f"repeat {index + 1}/{args.repeats} ...", flush=True)
            repeats.append(one_repeat(index, args, work / f"repeat-{index + 1}"))
            if not args.keep:
                shutil.rmtree(work / f"repeat-{index + 1}" / "tuner", ignore_errors=True)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; partial work in {work}", file=sys.stderr)
        return 130
    text = report(args, repeats, started, load_before, time.time() - clock)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    if "teacher" in repeats[0]:
        record_figures(headline_entries(args, repeats, args.epochs), args.record)
    print(f"written to {args.output}" + (f"; work folder {work}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
