"""tuner's side of the in-process measurements, and the machine's matmul ceiling; one JSON result per process.

    throughput      one epoch of tuner.training.fit on the teacher stage (its default: random batches trained
                    unpadded) at --precision auto (tuner's default) or fp32
    teacher-logits  the student stage's once-per-search teacher pass over the training sentences
    student-trial   one trial of tuner's student search as its trainable runs it (teacher logits computed once
                    first), at a kept search's best config (--student) and --train-seed
    matmul          2048 x 2048 @ 2048 x 2048 FLOP/s in float32 and bf16, torch.set_num_threads(THREADS), after warmup
    steps           the levers of issue 6 on fit's padded training step (``--batches length``, length-grouped
                    batches; bench/step_timer.py): --variant fp32, bf16 (CPU autocast), compile (torch.compile,
                    dynamic shapes) or compile-bf16 (both), --threads N, over the same first --steps batches

Run by bench/run_benchmarks.py; every sub-command takes --data, the sizes and --out (see bench/common.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (BATCH_SIZE, COMPILE_BACKENDS, LEVERS, THROUGHPUT_HPARAMS, TRAIN_SEED_FLAG,  # noqa: E402
                          command_parser, non_embedding_parameters, run_settings, train_seed, write_result)
from bench.step_timer import StepTimer, matmul_flops, step_batches  # noqa: E402

import torch  # noqa: E402

from tuner.config import PRECISIONS, TrainSettings, default_threads, train_settings  # noqa: E402
from tuner.data import random_batches  # noqa: E402
from tuner.models import initial_token_classifier, load_model  # noqa: E402
from tuner.stages import student  # noqa: E402
from tuner.task import load_task, stage_inputs  # noqa: E402
from tuner.training import fit  # noqa: E402
from tuner.unpadded import attention_groups  # noqa: E402

THREADS = default_threads(0)  # what a tuner trial gets with one trial on the node (--cpus-per-trial all cores)
MATMUL_SIZE = 2048
WARMUP_STEPS = 5


def padded_tokens(lengths: list[int], seed: int) -> int:
    """Tokens fit's first epoch computes attention over once padded: its random batches trained unpadded pad
    only each attention group (``ATTENTION_GROUP`` sentences, longest first) to its own longest sentence."""
    return sum(attention_groups(sorted((lengths[i] for i in batch), reverse=True), "cpu")[1]
               for batch in random_batches(lengths, BATCH_SIZE, seed))


def throughput(args) -> dict:
    """One epoch of fit at ``--precision`` (auto: tuner's default, bf16 where the CPU has it natively), and the
    validation F1 it reached."""
    settings = run_settings(args)
    task, tokenizer = load_task(settings, None)
    model = initial_token_classifier("minilm", task.labels, args.seed, len(tokenizer))
    train_settings = TrainSettings(epochs=1, batch_size=BATCH_SIZE, eval_batch_size=settings.profile.eval_batch_size,
                                   seed=args.seed, threads=THREADS, precision=args.precision)
    metrics = next(iter(fit(model, THROUGHPUT_HPARAMS, task, train_settings))).metrics
    seconds = metrics["train_seconds"]
    return {"train_seconds": seconds, "sentences": len(task.train), "real_tokens": task.train.token_count(),
            "padded_tokens": padded_tokens(task.train.lengths(), args.seed), "tokens_per_second":
            metrics["train_tokens_per_second"], "sentences_per_second": len(task.train) / seconds,
            "non_embedding_parameters": non_embedding_parameters(model), "threads": THREADS,
            "bf16": metrics["bf16"], "val_f1": metrics["val_f1"]}


def student_task(args):
    """The settings, task and teacher of a student search from ``--teacher`` at these sizes."""
    settings = run_settings(args, stage="student", teacher=args.teacher)
    teacher = load_model(args.teacher)
    task, _ = load_task(settings, teacher)
    torch.set_num_threads(THREADS)
    return settings, task, teacher


def teacher_logits(args) -> dict:
    settings, task, teacher = student_task(args)
    started = time.perf_counter()
    student.compute_teacher_logits(teacher, task.train, settings.profile.eval_batch_size, task.pad_token_id, "cpu")
    return {"seconds": time.perf_counter() - started, "sentences": len(task.train)}


def student_trial(args) -> dict:
    """tuner's student trial of ``--student``'s config (its ``result.json``) at ``--train-seed`` (the student's
    initialisation, data order and dropout; the sentences stay --seed's), outside Ray: the F1 side of the paired
    comparison with ``hf_peer.py distill`` at the same seed. The trial's wall time excludes the teacher logits."""
    settings, task, teacher = student_task(args)
    inputs = stage_inputs(student.STAGE, settings, task, teacher, teacher.config.vocab_size)
    best = json.loads((args.student / "result.json").read_text())
    hparams = dict(best["hyperparameters"], num_layers=best["num_layers"], factor_dim=best["factor_dim"])
    seed = train_seed(args)
    trial = train_settings(settings.profile, args.epochs, seed, THREADS)
    started = time.perf_counter()
    scores = [result.metrics["val_f1"] for result in student.train(hparams, task, inputs, trial)]
    return {"trial_wall_seconds": time.perf_counter() - started, "val_f1_per_epoch": scores,
            "best_val_f1": max(scores), "train_seed": seed, "hyperparameters": hparams}


def matmul(args) -> dict:
    """FLOP/s of a 2048^3 matmul in float32 and in bf16 (the ceilings of fit's fp32 and bf16 training steps)."""
    torch.set_num_threads(THREADS)
    record = {"size": MATMUL_SIZE, "threads": THREADS}
    for key, dtype in (("flops_per_second", torch.float32), ("bf16_flops_per_second", torch.bfloat16)):
        record[key] = matmul_flops(MATMUL_SIZE, MATMUL_SIZE, MATMUL_SIZE, dtype)
    return record


def steps(args) -> dict:
    """Real tokens/s of fit's padded training step under one lever (``bench/step_timer.py``). The first
    WARMUP_STEPS batches (and torch.compile's compilation) are timed apart; the rest is the steady rate."""
    task, tokenizer = load_task(run_settings(args), None)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = initial_token_classifier("minilm", task.labels, args.seed, len(tokenizer))
    if args.variant.startswith("compile"):
        model = torch.compile(model, dynamic=True, backend=args.compile_backend)
    timer = StepTimer(model, task, "cpu", "bf16" if "bf16" in args.variant else "fp32", forward="padded")
    timed = timer.run(step_batches(task.train.lengths(), "length", BATCH_SIZE, args.seed, WARMUP_STEPS + args.steps),
                      WARMUP_STEPS)  # a small --train-sentences wraps around
    return {"variant": args.variant, "threads": args.threads, "tokens_per_second": timed["real_tokens_per_second"],
            **({"compile_backend": args.compile_backend} if args.variant.startswith("compile") else {}), **timed}


COMMANDS = {"throughput": {"--precision": {"choices": PRECISIONS, "default": "auto"}},
            "teacher-logits": {"--teacher": {"type": Path, "required": True}},
            "student-trial": {"--teacher": {"type": Path, "required": True},
                              "--student": {"type": Path, "required": True, "help": "tuner's student/best folder"},
                              "--train-seed": TRAIN_SEED_FLAG},
            "matmul": {},
            "steps": {"--variant": {"choices": LEVERS, "required": True},
                      "--threads": {"type": int, "default": THREADS}, "--steps": {"type": int, "default": 60},
                      "--compile-backend": {"choices": COMPILE_BACKENDS, "default": "inductor"}}}


def main(argv=None) -> int:
    args = command_parser("python bench/probes.py", __doc__, COMMANDS).parse_args(argv)
    record = {"throughput": throughput, "teacher-logits": teacher_logits, "student-trial": student_trial,
              "matmul": matmul, "steps": steps}[args.command](args)
    write_result(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
