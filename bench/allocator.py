"""glibc's allocator kept or not, for tuner's training epoch and the tuned peer's, side by side in one run.

    python bench/allocator.py [--seeds 0 1 2] [--train-sentences 3000] [--output results/allocator.md]
                              [--headlines] [--quick]

By default glibc serves each allocation over 32 MB with a fresh ``mmap`` and unmaps it when freed, so a training
step's word-embedding gradient (V x H float32, 47 MB for MiniLM) is page-faulted in again every step.
``tuner.training.keep_freed_memory`` (called by ``fit``) turns that off with ``mallopt``; the Hugging Face peer
gets the same two settings from glibc's environment variables (``MALLOC_MMAP_MAX_=0``,
``MALLOC_TRIM_THRESHOLD_=2147483647``), which is how an expert would give them to a ``Trainer``. Per seed, each
side trains one epoch (``bench/probes.py throughput``, ``bench/hf_peer.py throughput --peer tuned`` with random
and with length-grouped batches) in a fresh process with the allocator as glibc leaves it ("off") and kept
("on"), in alternating order. It reports real tokens/s per side and setting (medians over seeds), the gain of
each side, tuner against each peer batching with both sides off and both on, and each epoch's validation F1 (the
setting changes no arithmetic, so each pair's F1 should match). ``--quick`` is its smoke mode (a few sentences,
one seed; the tests run it). The table goes to ``--output`` and the record beside it as .json; ``--headlines``
updates ``results/benchmarks.json`` with tuner against each peer batching, both sides kept.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (DEFAULT_DATA, ROOT, BenchError, OneLineParser, command_line,  # noqa: E402
                          measure_and_publish, positive_int, require_conll)

from tuner.training import KEEP_FREED_MEMORY_ENV  # noqa: E402

BENCH = Path(__file__).resolve().parent
SIDES = {"tuner": ["probes.py", "throughput"],
         "peer, random batches": ["hf_peer.py", "throughput", "--peer", "tuned", "--batching", "random"],
         "peer, group_by_length": ["hf_peer.py", "throughput", "--peer", "tuned", "--batching", "length"]}
SETTINGS = ("off", "on")
# glibc's environment names for what keep_freed_memory sets with mallopt; off: glibc's defaults, and tuner told not to
GLIBC_KEEP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
FULL = {"train_sentences": 3000, "eval_sentences": 500, "seeds": [0, 1, 2]}
QUICK = {"train_sentences": 64, "eval_sentences": 32, "seeds": [0]}


def environment(side: str, setting: str) -> dict:
    """glibc's defaults for "off"; for "on", tuner's own ``keep_freed_memory`` (nothing in its environment) and
    glibc's environment variables for the peer."""
    env = {k: v for k, v in os.environ.items() if k not in GLIBC_KEEP and k != KEEP_FREED_MEMORY_ENV}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if setting == "off":
        return {**env, KEEP_FREED_MEMORY_ENV: "0"}
    return env if side == "tuner" else {**env, **GLIBC_KEEP}


def epoch(side: str, setting: str, seed: int, args, work: Path) -> dict:
    """One epoch of ``side`` in a fresh process; its JSON record."""
    out = work / f"{side.split(',')[0]}-{SIDES[side][-1]}-{setting}-{seed}.json"
    script, *command = SIDES[side]
    argv = [sys.executable, BENCH / script, command[0], "--data", args.data, "--train-sentences",
            args.train_sentences, "--eval-sentences", args.eval_sentences, "--epochs", 1, "--seed", seed,
            "--out", out, *command[1:]]
    proc = subprocess.run([str(a) for a in argv], cwd=ROOT, env=environment(side, setting), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        raise BenchError(f"{side} ({setting}, seed {seed}) exited {proc.returncode}: "
                           f"{lines[-1] if lines else 'no output'}")
    return json.loads(out.read_text())


def run(args) -> dict:
    records = {side: {setting: [] for setting in SETTINGS} for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="tuner-allocator-") as work:
        for index, seed in enumerate(args.seeds):
            order = SETTINGS if index % 2 == 0 else SETTINGS[::-1]  # alternate: a drifting host favours neither
            for side in SIDES:
                for setting in order:
                    record = epoch(side, setting, seed, args, Path(work))
                    records[side][setting].append({"seed": seed, "tokens_per_second": record["tokens_per_second"],
                                                   "val_f1": record["val_f1"], "threads": record["threads"]})
    return records


def median_rate(runs: list) -> float:
    return statistics.median(r["tokens_per_second"] for r in runs)


def report(records: dict, command: str, started: str, minutes: float) -> str:
    lines = ["# glibc's allocator kept or not: tuner's epoch and the tuned peer's", "",
             f"- command: `{command}`; {started}, {minutes:.1f} minutes; "
             f"{records['tuner']['on'][0]['threads']} threads",
             "- off: glibc's defaults (tuner with `TUNER_KEEP_FREED_MEMORY=0`); on: tuner's default "
             "(`keep_freed_memory`), the peer with `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`", "",
             "| side | off, real tokens/s | on | on / off | F1 off / on, per seed |", "|---|---|---|---|---|"]
    for side, runs in records.items():
        off, on = median_rate(runs["off"]), median_rate(runs["on"])
        f1s = ", ".join(f"{a['val_f1']:.4f} / {b['val_f1']:.4f}" for a, b in zip(runs["off"], runs["on"]))
        lines.append(f"| {side} | {off:,.0f} | {on:,.0f} | {on / off:.2f}x | {f1s} |")
    lines += ["", "| tuner / peer, real tokens/s | both off | both on | tuner on, peer off |", "|---|---|---|---|"]
    tuner = records["tuner"]
    for side, runs in records.items():
        if side == "tuner":
            continue
        lines.append(f"| against the {side} | {median_rate(tuner['off']) / median_rate(runs['off']):.2f}x | "
                     f"{median_rate(tuner['on']) / median_rate(runs['on']):.2f}x | "
                     f"{median_rate(tuner['on']) / median_rate(runs['off']):.2f}x |")
    return "\n".join(lines) + "\n"


THROUGHPUT_GOAL, F1_TOLERANCE = 1.3, 0.005  # issue 20's throughput goal against the tuned peer, "equal F1"


def headline_entries(records: dict, command: str) -> list:
    """``results/benchmarks.json`` entries: tuner against each peer batching with the allocator kept on both
    sides (the like-for-like figure), F1 difference in points as a detail."""
    from bench import headlines

    tuner, entries = records["tuner"], []
    for side, runs in records.items():
        if side == "tuner":
            continue
        ratio = median_rate(tuner["on"]) / median_rate(runs["on"])
        f1 = statistics.median(t["val_f1"] - p["val_f1"] for t, p in zip(tuner["on"], runs["on"]))
        entries.append(headlines.entry(
            f"training throughput, glibc's freed memory kept on both sides, tuner fit / Trainer on "
            f"{side.split(', ')[1]} (real tokens/s, median over seeds)", round(ratio, 3), "x",
            ">= 1.3x at equal F1 (issue 20, against the tuned peer)",
            ratio >= THROUGHPUT_GOAL and f1 >= -F1_TOLERANCE, "tuned",
            f"bf16 Trainer, adamw_torch_fused, {side.split(', ')[1]}, MALLOC_MMAP_MAX_=0 "
            f"MALLOC_TRIM_THRESHOLD_={2**31 - 1}", command,
            f1_points=round(100 * f1, 2), seeds=[r["seed"] for r in runs["on"]],
            peer_off_ratio=round(median_rate(tuner["on"]) / median_rate(runs["off"]), 3)))
    return entries


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = OneLineParser(prog="python bench/allocator.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", help=f"default {FULL['seeds']}")
    parser.add_argument("--train-sentences", type=positive_int, help=f"default {FULL['train_sentences']}")
    parser.add_argument("--eval-sentences", type=positive_int, help=f"default {FULL['eval_sentences']}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CoNLL files (train.txt)")
    parser.add_argument("--output", type=Path, help="markdown report (default results/allocator.md, "
                                                    "results/allocator-quick.md with --quick)")
    parser.add_argument("--quick", action="store_true", help="a few sentences, one seed (a minute or two)")
    parser.add_argument("--headlines", action="store_true",
                        help="update results/benchmarks.json with tuner against each peer batching, both kept")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.output = args.output or ROOT / "results" / ("allocator-quick.md" if args.quick else "allocator.md")
    require_conll(parser, args.data)
    command = command_line("allocator.py", argv)
    records = measure_and_publish(args.output, lambda: run(args),
                                  lambda found, started, minutes: report(found, command, started, minutes))
    if records is None:
        return 1
    if args.headlines:
        from bench import headlines

        headlines.update(headline_entries(records, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
