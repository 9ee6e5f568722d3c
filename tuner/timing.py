"""CPU latency of a token classifier, measured in the driver (never inside trials, which share the CPUs): per
sentence at batch 1 and sentences per second at batch 32, with the machine it ran on."""

from __future__ import annotations

import platform
import statistics
import time

from tuner.data import Encoded, sorted_batches
from tuner.training import Forward, collate

BATCH = 32
WARMUP_CALLS = 5


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.lower().startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def latency(forward: Forward, data: Encoded, pad_token_id: int, sentences: int | None = None,
            passes: int = 3) -> dict:
    """``passes`` timed passes over the first ``sentences`` sentences of ``data`` (all by default), after a few
    warm-up calls. Batch 1: each sentence alone; its median and 95th percentile in milliseconds, over every
    sentence of every pass. Batch 32: length-sorted batches; sentences per second, the median over passes."""
    chosen = list(range(len(data) if sentences is None else min(sentences, len(data))))
    single = [collate(data, [i], pad_token_id) for i in chosen]
    lengths = [len(data.input_ids[i]) for i in chosen]
    batches = [collate(data, [chosen[j] for j in group], pad_token_id) for group in sorted_batches(lengths, BATCH)]
    for batch in single[:WARMUP_CALLS] + batches[:1]:
        forward(batch["input_ids"], batch["attention_mask"])
    per_sentence, rates = [], []
    for _ in range(passes):
        for batch in single:
            started = time.perf_counter()
            forward(batch["input_ids"], batch["attention_mask"])
            per_sentence.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        for batch in batches:
            forward(batch["input_ids"], batch["attention_mask"])
        rates.append(len(chosen) / (time.perf_counter() - started))
    ordered = sorted(per_sentence)
    return {"batch_1_median_ms": statistics.median(per_sentence),
            "batch_1_p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            f"batch_{BATCH}_sentences_per_second": statistics.median(rates), "sentences": len(chosen),
            "passes": passes}
