"""Where tuner's training step spends its time, and what bounds its FLOP/s against the machine's matmul.

    python bench/step_profile.py [--steps 40] [--precision auto] [--batches random] [--output FILE.md]
    python bench/step_profile.py --quick          # smoke mode: a few steps on a few sentences

The step is `tuner.training.fit`'s (its default random batches trained unpadded, or with `--batches length`
length-grouped batches through the padded forward; gradient clipping, fused AdamW, batch size 16, the teacher
model, the `cpu` profile's sentences, glibc's freed memory kept as fit keeps it unless
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
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (BATCH_SIZE, DEFAULT_DATA, ROOT, command_line, non_embedding_parameters,  # noqa: E402
                          publish, require_conll, run_settings)
from bench.probes import MATMUL_SIZE, THROUGHPUT_HPARAMS, matmul_flops  # noqa: E402

import torch  # noqa: E402

from tuner.cli import OneLineParser, positive_int  # noqa: E402
from tuner.config import BATCH_ORDERS, PRECISIONS, default_threads  # noqa: E402
from tuner.data import length_grouped_batches, random_batches  # noqa: E402
from tuner.models import initial_token_classifier  # noqa: E402
from tuner.task import load_task  # noqa: E402
from tuner.timing import cpu_name  # noqa: E402
from tuner.training import (MAX_GRAD_NORM, autocast, build_optimizer, collate, keep_freed_memory,  # noqa: E402
                            resolved_precision, token_cross_entropy)

FULL = {"train_sentences": 3000, "steps": 40, "warmup": 5}
QUICK = {"train_sentences": 64, "steps": 3, "warmup": 1}
# run_settings' other sizes: evaluation and the epoch count do not enter the profiled step
SETTINGS = {"eval_sentences": 32, "epochs": 1, "seed": 0}
PHASES = ("data", "forward", "backward", "clip", "optimizer")
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


def step(model, optimizer, task, indices, precision: str, batches: str, record) -> int:
    """One training step as fit runs it; returns its real tokens. ``record`` names the phases for the profiler."""
    with record("data"):
        batch = collate(task.train, indices, task.pad_token_id)
    with record("forward"), autocast("cpu", precision):
        loss = token_cross_entropy(model, batch, indices, batches)
    with record("backward"):
        loss.backward()
    with record("clip"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    with record("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return int(batch["attention_mask"].sum())


def measure(args) -> dict:
    task, tokenizer = load_task(run_settings(args), None)
    threads = default_threads(0)
    torch.set_num_threads(threads)
    kept = keep_freed_memory()  # as fit sets it (TUNER_KEEP_FREED_MEMORY=0: glibc's defaults)
    precision = resolved_precision("cpu", args.precision)
    model = initial_token_classifier("minilm", task.labels, 0, len(tokenizer)).train()
    optimizer = build_optimizer(model, THROUGHPUT_HPARAMS["learning_rate"], THROUGHPUT_HPARAMS["weight_decay"])
    order = random_batches if args.batches == "random" else length_grouped_batches
    batches = order(task.train.lengths(), BATCH_SIZE, 0)
    batches = [batches[i % len(batches)] for i in range(args.warmup + 2 * args.steps)]
    plain = torch.profiler.record_function
    for indices in batches[:args.warmup]:
        step(model, optimizer, task, indices, precision, args.batches, plain)
    timed = batches[args.warmup:args.warmup + args.steps]
    started, tokens = time.perf_counter(), 0
    for indices in timed:  # the unprofiled rate: record_function without an active profiler costs next to nothing
        tokens += step(model, optimizer, task, indices, precision, args.batches, plain)
    seconds = time.perf_counter() - started
    profiled_batches = batches[args.warmup + args.steps:]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True,
                                record_shapes=True) as prof:
        profiled_started = time.perf_counter()
        for indices in profiled_batches:
            step(model, optimizer, task, indices, precision, args.batches, plain)
        profiled_seconds = time.perf_counter() - profiled_started
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
            "cpu": cpu_name(), "steps": len(timed),
            "tokens_per_second": tokens / seconds, "step_seconds": seconds / len(timed),
            "profiled_step_seconds": profiled_seconds / len(profiled_batches),
            "step_flops_per_second": 6 * parameters * tokens / seconds, "non_embedding_parameters": parameters,
            "phases": {p: phases[p] / 1e6 / profiled_seconds for p in PHASES},
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
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "step_profile.md",
                        help="markdown report; the record goes beside it as .json")
    args = parser.parse_args(argv)
    for key, value in {**(QUICK if args.quick else FULL), **SETTINGS}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    require_conll(parser, args.data)
    record = measure(args)
    publish(args.output, report(record, command_line("step_profile.py", argv)), record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
