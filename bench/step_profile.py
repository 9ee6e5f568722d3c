"""Where tuner's training step spends its time, and what bounds its FLOP/s against the machine's matmul.

    python bench/step_profile.py [--steps 40] [--precision auto] [--batches random] [--output FILE.md]
    python bench/step_profile.py --quick          # smoke mode: a few steps on a few sentences (a temporary folder)

The step is `tuner.training.fit`'s, as `bench/step_timer.py` runs it (its default random batches trained unpadded,
or with `--batches length` length-grouped batches through the padded forward; gradient clipping, fused AdamW, batch
size 16, the teacher model, the `cpu` profile's sentences, glibc's freed memory kept as fit keeps it unless
`TUNER_KEEP_FREED_MEMORY=0`), timed without a profiler first, then run again under `torch.profiler`. It reports:

- the step's phases (forward, backward, clipping, optimizer) as shares of the profiled wall time;
- the step's operators by kind (matmuls; bf16 casts and copies; the optimizer; attention; everything else) as
  shares of the profiled operator time;
- the FLOP/s the step's matmuls reach while they run (the profiler's FLOP counts over their own time), against a
  2048^3 matmul and against a lone matmul of the shape the step's matmuls spend most time in, both timed here at
  the same precision.

The gap from the whole step's FLOP/s (6 x non-embedding parameters x real tokens/s, as bench/run_benchmarks.py's
section 5) to the 2048^3 matmul's splits into: the time outside matmuls, and how far the step's small matmuls fall
below a large one. Results: --output (markdown) and the same name with .json.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (BATCH_SIZE, DEFAULT_DATA, command_line, non_embedding_parameters,  # noqa: E402
                          output_flags, publish, require_conll, run_settings, settle_outputs)
from bench.probes import MATMUL_SIZE  # noqa: E402
from bench.step_timer import PHASES, StepTimer, matmul_flops, step_batches  # noqa: E402

import torch  # noqa: E402

from tuner.cli import OneLineParser, positive_int  # noqa: E402
from tuner.config import BATCH_ORDERS, PRECISIONS, default_threads  # noqa: E402
from tuner.models import initial_token_classifier  # noqa: E402
from tuner.task import load_task  # noqa: E402
from tuner.timing import cpu_name  # noqa: E402
from tuner.memory import keep_freed_memory  # noqa: E402
from tuner.training import resolved_precision  # noqa: E402

FULL = {"train_sentences": 3000, "steps": 40, "warmup": 5}
QUICK = {"train_sentences": 64, "steps": 3, "warmup": 1}
# run_settings' other sizes: evaluation and the epoch count do not enter the profiled step
SETTINGS = {"eval_sentences": 32, "epochs": 1, "seed": 0}
# operator kinds, by the aten names the profiler records (first match wins)
KINDS = [("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                     "mkldnn", "onednn")),
         ("casts and copies (autocast's bf16 weights, layouts)", ("aten::to", "aten::_to_copy", "aten::copy_",
                                                                  "aten::contiguous", "aten::clone")),
         ("optimizer (fused AdamW, clipping's norms)", ("_fused_adam", "aten::_foreach", "aten::norm",
                                                        "aten::linalg_vector_norm")),
         ("attention (softmax, scaled dot product)", ("softmax", "scaled_dot_product", "_efficient_attention",
                                                      "_flash_attention")),
         ("layer norm, GELU, dropout", ("layer_norm", "gelu", "dropout", "bernoulli", "native_dropout"))]
OTHER = "everything else (elementwise, indexing, embedding, loss, autograd bookkeeping)"


def kind(name: str) -> str:
    lowered = name.lower()
    for label, needles in KINDS:
        if any(needle in lowered for needle in needles):
            return label
    return OTHER


def measure(args) -> dict:
    task, tokenizer = load_task(run_settings(args), None)
    threads = default_threads(0)
    torch.set_num_threads(threads)
    kept = keep_freed_memory()  # as fit sets it (TUNER_KEEP_FREED_MEMORY=0: glibc's defaults)
    precision = resolved_precision("cpu", args.precision)
    model = initial_token_classifier("minilm", task.labels, 0, len(tokenizer))
    timer = StepTimer(model, task, "cpu", precision, "unpadded" if args.batches == "random" else "padded")
    batches = step_batches(task.train.lengths(), args.batches, BATCH_SIZE, 0, args.warmup + 2 * args.steps)
    timed = timer.run(batches[:args.warmup + args.steps], args.warmup)  # the unprofiled rate
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True,
                                  record_shapes=True)
    profiled = timer.run(batches[args.warmup + args.steps:], within=prof)
    phases, kinds, flops, matmul_us, shapes = defaultdict(float), defaultdict(float), 0.0, 0.0, defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key in PHASES:
            phases[event.key] += event.cpu_time_total
            continue
        label = kind(event.key)
        kinds[label] += event.self_cpu_time_total
        if label == "matmul" and event.flops:
            flops += event.flops
            matmul_us += event.self_cpu_time_total
            dims = [tuple(s) for s in event.input_shapes if s and len(s) == 2]
            if len(dims) >= 2 and event.key in ("aten::mm", "aten::addmm"):
                shapes[(dims[-2], dims[-1])] += event.self_cpu_time_total
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    big = matmul_flops(MATMUL_SIZE, MATMUL_SIZE, MATMUL_SIZE, dtype)
    typical = max(shapes, key=shapes.get) if shapes else ((BATCH_SIZE * 16, 384), (384, 1536))
    (m, k), (_, n) = typical
    small = matmul_flops(m, k, n, dtype, repeats=20)
    parameters = non_embedding_parameters(model)
    total_ops = sum(kinds.values())
    return {"precision": precision, "batches": args.batches, "threads": threads, "freed_memory_kept": kept,
            "cpu": cpu_name(), "steps": timed["steps"], "tokens_per_second": timed["real_tokens_per_second"],
            "step_seconds": timed["seconds"] / timed["steps"],
            "profiled_step_seconds": profiled["seconds"] / profiled["steps"],
            "step_flops_per_second": 6 * parameters * timed["real_tokens_per_second"],
            "non_embedding_parameters": parameters,
            "phases": {p: phases[p] / 1e6 / profiled["seconds"] for p in PHASES},
            "kinds": {k: v / total_ops for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "matmul_flops_per_second": flops / (matmul_us / 1e6) if matmul_us else float("nan"),
            "matmul_share": kinds["matmul"] / total_ops if total_ops else float("nan"),
            "big_matmul_flops_per_second": big, "typical_shape": [m, k, n], "typical_matmul_flops_per_second": small}


def report(record: dict, command: str) -> str:
    big = record["big_matmul_flops_per_second"]
    m, k, n = record["typical_shape"]
    lines = [f"- command: `{command}`; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {record['cpu']}, "
             f"{record['threads']} threads; precision {record['precision']}; {record['batches']} batches; "
             f"glibc's freed memory {'kept' if record['freed_memory_kept'] else 'as glibc leaves it'}; "
             f"{record['steps']} steps timed, as many profiled",
             "", "| the step | value |", "|---|---|",
             f"| real tokens / s (unprofiled) | {record['tokens_per_second']:.0f} |",
             f"| step FLOP/s (6 x {record['non_embedding_parameters'] / 1e6:.1f}M non-embedding parameters x tokens/s)"
             f" | {record['step_flops_per_second'] / 1e9:.1f} G ({record['step_flops_per_second'] / big:.1%} of the "
             f"{MATMUL_SIZE}^3 matmul's {big / 1e9:.0f} G) |",
             f"| the step's matmuls while they run (profiler FLOPs / their own time) | "
             f"{record['matmul_flops_per_second'] / 1e9:.1f} G ({record['matmul_flops_per_second'] / big:.1%} of "
             f"the {MATMUL_SIZE}^3 matmul) |",
             f"| a lone matmul of the shape the step's matmuls spend most time in ({m} x {k} @ {k} x {n}) | "
             f"{record['typical_matmul_flops_per_second'] / 1e9:.1f} G "
             f"({record['typical_matmul_flops_per_second'] / big:.1%}) |",
             f"| profiled step / unprofiled step (the profiler's own cost) | "
             f"{record['profiled_step_seconds'] / record['step_seconds']:.2f}x |",
             "", "| phase | share of the profiled step's wall time |", "|---|---|",
             *[f"| {phase} | {share:.1%} |" for phase, share in record["phases"].items()],
             "", "| operators | share of the profiled operator time |", "|---|---|",
             *[f"| {label} | {share:.1%} |" for label, share in record["kinds"].items()], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = OneLineParser(prog="python bench/step_profile.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps on a few sentences (seconds)")
    parser.add_argument("--steps", type=positive_int, help=f"steps timed, then as many profiled (default "
                                                            f"{FULL['steps']})")
    parser.add_argument("--train-sentences", type=positive_int, help=f"default {FULL['train_sentences']}")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="fit's precision (default auto)")
    parser.add_argument("--batches", choices=BATCH_ORDERS, default="random",
                        help="fit's batch order (default random, trained unpadded)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CoNLL files (train.txt)")
    output_flags(parser, "step_profile.md")
    args = parser.parse_args(argv)
    for key, value in {**(QUICK if args.quick else FULL), **SETTINGS}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    require_conll(parser, args.data)
    command = command_line("step_profile.py", argv)
    settle_outputs(parser, args, "step_profile.md", command)
    record = measure(args)
    publish(args.output, report(record, command), record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
