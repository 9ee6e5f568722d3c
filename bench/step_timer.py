"""tuner's training step, timed: the one timing loop of bench/ (the CPU levers of ``probes.py steps``,
``gpu_probe.py``, ``step_profile.py``), and the matmul FLOP/s a step is held against.

The step is ``tuner.training.fit``'s, built from its own functions: ``collate``, the loss under ``autocast``
(``token_cross_entropy``: the unpadded forward, or the model's padded forward), backward, ``clip_grad_norm_`` to
``MAX_GRAD_NORM``, ``build_optimizer``'s fused AdamW and ``zero_grad``; only fit's learning-rate schedule is left
out (a constant rate). Each phase runs under ``torch.profiler.record_function``, so a profiler around a run splits
the step by phase; without one they cost next to nothing.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time

import torch

from bench.common import THROUGHPUT_HPARAMS
from tuner.data import length_grouped_batches, random_batches
from tuner.training import MAX_GRAD_NORM, autocast, build_optimizer, collate, token_cross_entropy
from tuner.unpadded import attention_groups

PHASES = ("data", "forward", "backward", "clip", "optimizer")
# the forward a step runs, as token_cross_entropy's ``batches`` argument picks it: "unpadded" through the unpadded
# forward on any device (tuner's default step on a CPU), "length" through the model's padded forward
FORWARDS = {"unpadded": "unpadded", "padded": "length"}
MATMUL_WARMUP, MATMUL_REPEATS = 3, 10


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_batches(lengths: list[int], order: str, batch_size: int, seed: int, count: int) -> list[list[int]]:
    """The first ``count`` batches of fit's ``order`` (random or length-grouped) over sentences of these lengths,
    wrapping around where an epoch has fewer."""
    epoch = (length_grouped_batches if order == "length" else random_batches)(lengths, batch_size, seed)
    return [epoch[i % len(epoch)] for i in range(count)]


class StepTimer:
    """fit's training step on ``task.train`` for ``model`` (a ``torch.compile``'d one too), with its own
    optimizer, at ``precision`` (``bf16`` or ``fp32``) through the ``forward`` of FORWARDS."""

    def __init__(self, model, task, device: str = "cpu", precision: str = "fp32", forward: str = "unpadded"):
        self.model, self.data, self.pad_token_id = model.train(), task.train, task.pad_token_id
        self.device, self.precision, self.forward = device, precision, forward
        self.optimizer = build_optimizer(model, THROUGHPUT_HPARAMS["learning_rate"], THROUGHPUT_HPARAMS["weight_decay"])

    def step(self, indices: list[int]) -> torch.Tensor:
        """One training step as fit runs it; its loss, left on the device."""
        phase = torch.profiler.record_function
        with phase("data"):
            batch = collate(self.data, indices, self.pad_token_id, self.device)
        with phase("forward"), autocast(self.device, self.precision):
            loss = token_cross_entropy(self.model, batch, indices, FORWARDS[self.forward])
        with phase("backward"):
            loss.backward()
        with phase("clip"):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        with phase("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def run(self, batches: list[list[int]], warmup: int = 0, within=None) -> dict:
        """A step per batch: the first ``warmup`` timed apart (compilation, first allocations), the rest the
        steady rate, the host waiting for the device at both ends of each window; ``within`` (a profiler) is
        entered around the steps alone. Tokens are counted from the host's lengths (no device sync inside the
        loop), losses read once at the end."""
        if len(batches) <= warmup:
            raise ValueError(f"{len(batches)} batches leave no timed step after {warmup} warm-up steps")
        losses = []
        with within or contextlib.nullcontext():
            synchronize(self.device)
            started = time.perf_counter()
            for number, indices in enumerate(batches):
                if number == warmup:
                    synchronize(self.device)
                    warmup_seconds, started, wall_started = (time.perf_counter() - started, time.perf_counter(),
                                                             time.time())
                losses.append(self.step(indices))
            synchronize(self.device)
            seconds = time.perf_counter() - started
        losses = torch.stack(losses).float().cpu().tolist()
        lengths = [[len(self.data.input_ids[i]) for i in indices] for indices in batches[warmup:]]
        real = sum(sum(rows) for rows in lengths)
        padded = sum(len(rows) * max(rows) for rows in lengths)
        attended = (sum(attention_groups(sorted(rows, reverse=True), "cpu")[1] for rows in lengths)
                    if self.forward == "unpadded" else padded)
        return {"steps": len(lengths), "warmup_steps": warmup, "seconds": seconds, "warmup_seconds": warmup_seconds,
                "real_tokens": real, "padded_tokens": padded, "padding_share": 1 - real / padded,
                "attention_tokens": attended, "real_tokens_per_second": real / seconds,
                "padded_tokens_per_second": padded / seconds, "first_loss": losses[0], "last_loss": losses[-1],
                "finite": all(math.isfinite(x) for x in losses), "started": wall_started,
                "finished": wall_started + seconds}


def matmul_flops(m: int, k: int, n: int, dtype=torch.bfloat16, device: str = "cpu",
                 repeats: int = MATMUL_REPEATS) -> float:
    """FLOP/s of an (m x k) @ (k x n) matmul at ``dtype`` on ``device``: the median of ``repeats`` timed runs after
    MATMUL_WARMUP untimed ones."""
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(MATMUL_WARMUP):
        a @ b
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return 2 * m * k * n / statistics.median(seconds)
