"""python -m bench <name> [args...]: run one benchmark (its own --help gives its flags); with no name, the list."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# name: (module, what it answers); each module's main(argv) runs it, as `python bench/<module>.py` does
BENCHMARKS = {
    "peers": ("run_benchmarks", "tuner against the Hugging Face peers (default and tuned): searches, distillation, "
                                "throughput, overhead, FLOP/s, levers on the step"),
    "student": ("student", "the student search against online distillation at another length, or paired over "
                           "student seeds (--seeds), on a kept peers run"),
    "front": ("front", "one F1-vs-size front search against budgeted single-objective searches"),
    "rungs": ("rungs", "a recorded front search replayed under other ParetoASHA rungs: trial time and front"),
    "packing": ("packing", "one search with tuner's chosen trials at once against the same search one trial at a "
                           "time"),
    "search_efficiency": ("search_efficiency", "how soon a search finds a good config: tuner against random and "
                                               "no early stopping, replayed on recorded learning curves"),
    "curves": ("curves", "record the learning-curve tables search_efficiency replays"),
    "step_profile": ("step_profile", "where tuner's training step spends its time, against the machine's matmul"),
    "gpu_probe": ("gpu_probe", "training tokens/s and MFU of a bert-base-shaped model on a GPU, per batching"),
    "suite": ("suite", "how long the tests take: the fast tier here, or CI from a clean clone (the README's times)"),
    "headlines": ("headlines", "regenerate results/benchmarks.md and the README's results block from "
                               "results/benchmarks.json"),
}
PROG = "python -m bench"


def listing() -> str:
    width = max(map(len, BENCHMARKS))
    return "\n".join([f"usage: {PROG} <name> [args...]   ({PROG} <name> --help: its flags)", "", "benchmarks:",
                      *(f"  {name:<{width}}  {text}" for name, (_, text) in BENCHMARKS.items())])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(listing())
        return 0
    name, *rest = argv
    if name not in BENCHMARKS:
        print(f"{PROG}: error: unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    return importlib.import_module(f"bench.{BENCHMARKS[name][0]}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
