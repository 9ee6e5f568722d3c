"""What the int8 gate tries, in order: the whole-model recipes (dynamic, then static with each calibration); the
dynamic ones on a quantization-aware fine-tuned copy (tuner.qat); then each quantizable node's sensitivity (the
logit error of quantizing it alone) and the fewest most-sensitive nodes kept in float32 that pass the F1 gate:
first with their weights still stored in int8 (only their activations unquantized), then wholly in float32.
Also the paired bootstrap interval of an F1 difference over sentences. tuner.onnx_io does the quantizing and
running.

Intel Neural Compressor's accuracy-driven tuning works the same way (rank operators by sensitivity, fall back the
fewest to float32); ONNX Runtime's ``qdq_loss_debug`` compares float and int8 activations tensor by tensor.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from seqeval.metrics.sequence_labeling import get_entities

CALIBRATION_SENTENCES = 64  # training sentences the sensitivity is measured on (never the gate's validation ones)
BOOTSTRAP_ROUNDS = 1000


def logit_error(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> float:
    """Mean squared difference of two forwards' logits over the same batches (real tokens only, the caller's
    masks applied), relative to the reference logits' mean square: 0 is identical."""
    squared = sum(float(((c - r) ** 2).sum()) for r, c in zip(reference, candidate))
    scale = sum(float((r ** 2).sum()) for r in reference)
    return squared / max(scale, 1e-12)


def rank_by_sensitivity(nodes: list[str], error_of: Callable[[str], float]) -> list[tuple[str, float]]:
    """``(node, error)`` pairs, most sensitive first: ``error_of(node)`` quantizes that node alone and measures."""
    return sorted(((node, error_of(node)) for node in nodes), key=lambda pair: -pair[1])


def fallback_sizes(count: int) -> Iterator[int]:
    """How many of the ``count`` most sensitive nodes to keep in float32, try by try: 1, 2, 3, 4, then growing by
    half (6, 9, 13, ...), up to half of them: past that the model is more float than int8."""
    k, most = 1, count // 2
    while k < most:
        yield k
        k = k + 1 if k < 4 else k + max(1, k // 2)
    if most >= 1:
        yield most


QUANTIZATION_AWARE = "quantization-aware fine-tuned"  # the source of the recipes tried on tuner.qat's copy


class FallbackSearch:
    """The F1 gate's candidates, in order: the whole-model recipes (``tuner.onnx_io.RECIPES``, then the static
    ``STATIC_RECIPES``, calibrated on ``calibration()``); where none passes and ``fine_tuned`` is given, the dynamic
    recipes on a quantization-aware fine-tuned copy of the model (whose fake quantization follows them)
    (``fine_tuned()`` makes it when first needed and returns its float file, prepared file and forward); where
    none of those passes either, the best of all by validation F1 with its k most sensitive nodes computed in float32,
    for growing k: their weights stored in int8, then (where that fails at every k) in float32. Sensitivity is
    measured once, on training sentences, when it is needed."""

    def __init__(self, float_path: Path, prepared: Path, float_forward, task, threads: int,
                 fine_tuned: Callable[[], tuple] | None = None):
        # source -> (float file, prepared file, float forward): what a Quantization of that source quantizes
        self.sources = {"": (Path(float_path), Path(prepared), float_forward)}
        self.fine_tuned, self.task, self.threads = fine_tuned, task, threads
        self.tried: list[tuple] = []  # (quantization, validation F1)
        self.ranked: list[tuple[str, str, float]] = []  # (node, module, logit error), most sensitive first
        self.batches: list[dict] | None = None  # the calibration sentences
        self.references: dict[str, list[torch.Tensor]] = {}  # each source's float logits on them

    def remembering(self, quantized):
        """``quantized`` (how -> (file, scores)) that also notes each try's validation F1 for ``candidates``."""
        def run(how):
            candidate, found = quantized(how)
            self.tried.append((how, found["validation"]))
            return candidate, found
        return run

    def candidates(self) -> Iterator:
        from tuner import onnx_io

        yield from onnx_io.RECIPES
        yield from onnx_io.STATIC_RECIPES
        if self.fine_tuned is not None:
            self.sources[QUANTIZATION_AWARE] = self.fine_tuned()
            yield from (dataclasses.replace(recipe, name=f"{recipe.name}, {QUANTIZATION_AWARE}",
                                            source=QUANTIZATION_AWARE) for recipe in onnx_io.RECIPES)
        base = max(self.tried, key=lambda pair: pair[1])[0]
        float_path, prepared, _ = self.sources[base.source]
        modules = onnx_io.quantizable_nodes(prepared, float_path)
        sizes = list(fallback_sizes(len(modules)))
        if not sizes:
            return
        self.ranked = [(node, modules[node], error) for node, error in
                       rank_by_sensitivity(list(modules), lambda node: self.node_error(base, node))]
        nodes = [node for node, _, _ in self.ranked]
        for int8_weights in (True, False):  # the smaller files first: the kept nodes' weights int8, then float32
            for k in sizes:
                kept = ", ".join(modules[node] for node in nodes[:k]) if k <= 3 else f"the {k} most sensitive nodes"
                what = "float32 activations, int8 weights" if int8_weights else "float32"
                yield dataclasses.replace(base, name=f"{base.name}, {what}: {kept}", keep_nodes=tuple(nodes[:k]),
                                          int8_weights=int8_weights)

    def calibration(self) -> list[dict]:
        """The calibration sentences (the first training ones), as one padded batch, made once: static
        quantization's activation ranges and the sensitivity ranking are measured on them. One batch, because ONNX
        Runtime's histogram calibrators (percentile, entropy) stack every batch's activations into one array."""
        from tuner.training import collate

        if self.batches is None:
            count = min(CALIBRATION_SENTENCES, len(self.task.train))
            self.batches = [collate(self.task.train, list(range(count)), self.task.pad_token_id)]
        return self.batches

    def logits(self, forward, batches: list[dict]) -> list[torch.Tensor]:
        return [forward(b["input_ids"], b["attention_mask"])[b["attention_mask"].bool()] for b in batches]

    def node_error(self, base, node: str) -> float:
        """The logit error of quantizing ``node`` alone, under the ``base`` recipe, against its source's float
        model."""
        from tuner import onnx_io

        float_path, prepared, float_forward = self.sources[base.source]
        batches = self.calibration()
        if base.source not in self.references:
            self.references[base.source] = self.logits(float_forward, batches)
        with tempfile.TemporaryDirectory() as work:
            probe = Path(work) / "probe.onnx"
            onnx_io.quantize(float_path, probe, base, only=[node], prepared=prepared, calibration=batches)
            found = self.logits(onnx_io.forward(onnx_io.session(probe, self.threads)), batches)
        return logit_error(self.references[base.source], found)

    def ranked_record(self) -> list[dict]:
        return [{"node": node, "module": module, "logit_error": round(error, 6)} for node, module, error in self.ranked]


def entity_counts(gold: list[list[str]], predicted: list[list[str]]) -> np.ndarray:
    """Per sentence: (true positives, predicted entities, gold entities), as seqeval counts them (entities never
    cross sentences, so summing rows gives seqeval's corpus micro counts)."""
    counts = np.zeros((len(gold), 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, predicted)):
        true, found = set(get_entities(g)), set(get_entities(p))
        counts[i] = (len(true & found), len(found), len(true))
    return counts


def micro_f1(counts: np.ndarray) -> np.ndarray:
    """Entity micro F1 from summed (tp, predicted, gold) along the last axis (0 where there is nothing)."""
    tp, predicted, gold = counts[..., 0], counts[..., 1], counts[..., 2]
    total = predicted + gold
    return np.where(total > 0, 2 * tp / np.maximum(total, 1), 0.0)


def paired_bootstrap(gold: list[list[str]], baseline: list[list[str]], candidate: list[list[str]],
                     rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> dict:
    """The candidate's F1 minus the baseline's, in points, and its 95% interval from resampling the same sentences
    for both (a paired bootstrap over sentences)."""
    a, b = entity_counts(gold, baseline), entity_counts(gold, candidate)
    picks = np.random.default_rng(seed).integers(0, len(gold), size=(rounds, len(gold)))
    differences = 100 * (micro_f1(b[picks].sum(axis=1)) - micro_f1(a[picks].sum(axis=1)))
    low, high = np.percentile(differences, [2.5, 97.5])
    point = 100 * float(micro_f1(b.sum(axis=0)) - micro_f1(a.sum(axis=0)))
    return {"points": round(point, 3), "low": round(float(low), 3), "high": round(float(high), 3),
            "sentences": len(gold), "rounds": rounds}
