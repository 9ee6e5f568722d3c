"""The training loop the stages share, as plain functions: batches, optimizer, schedule, evaluation, checkpoints.

No Ray here: ``fit`` yields one ``EpochResult`` per epoch and the caller decides what to do with it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import get_linear_schedule_with_warmup

from tuner.config import IGNORE_INDEX, SIZE_METRIC, TrainSettings
from tuner.data import NO_TOKEN, Encoded, length_grouped_batches, random_batches, sorted_batches
from tuner.errors import TunerError
from tuner.memory import keep_freed_memory
from tuner.metrics import entity_scores
from tuner.models import WEIGHTS_FILE, count_parameters, save_model
from tuner.unpadded import real_token_logits

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
CHECK_STEPS = 50  # on a GPU, steps between reads of the loss (each read waits for the device)
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "training_state.json"


def check_finite(loss_sum: torch.Tensor, epoch: int, step: int, hparams: dict) -> None:
    """Stop a trial whose loss went NaN or infinite (a sum of the epoch's losses so far is, from then on)."""
    if not torch.isfinite(loss_sum):
        raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, by step {step + 1}: learning rate "
                                 f"{hparams['learning_rate']:.3g} is likely too high")


def select_device(use_gpu: bool | None = None) -> str:
    """The device to compute on: None (the driver), ``cuda`` where torch sees one; a trial's ``use_gpu``, its own
    resources: a trial given a GPU whose torch sees none fails rather than training on the CPU unnoticed (a
    CPU-only torch in the worker, a driver mismatch)."""
    if use_gpu is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not use_gpu:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError(f"this trial was given a GPU, but torch {torch.__version__} here sees none "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    return "cuda"


def native_bf16(device: str) -> bool:
    """Whether ``device`` multiplies bf16 in hardware: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX
    (elsewhere bf16 is emulated and slower than float32)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def uses_bf16(device: str, precision: str = "auto") -> bool:
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def resolved_precision(device: str, precision: str = "auto") -> str:
    """``bf16`` or ``fp32`` for ``device``: resolve ``auto`` once per loop, not on every batch."""
    return "bf16" if uses_bf16(device, precision) else "fp32"


def autocast(device: str, precision: str = "auto"):
    """bf16 autocast (matmuls in bf16, weights and reductions in float32) per ``precision``: auto picks it where
    the device has native bf16; fp32 never."""
    if uses_bf16(device, precision):
        return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def collate(data: Encoded, indices: list[int], pad_token_id: int, device: str = "cpu") -> dict:
    """Pad one batch to its own longest sentence (dynamic padding)."""
    width = max(len(data.input_ids[i]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        input_ids[row, :n] = torch.tensor(data.input_ids[i])
        labels[row, :n] = torch.tensor(data.labels[i])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "labels": labels.to(device)}


def build_optimizer(model: nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with decay on weight matrices only (not biases, LayerNorm or embeddings' norms)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())  # one kernel per step, not per tensor
    return torch.optim.AdamW(groups, lr=learning_rate, fused=fused)


def build_scheduler(optimizer, warmup_ratio: float, total_steps: int):
    return get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)


Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> logits [B, S, L]


@torch.no_grad()
def predict_tags(model: nn.Module, data: Encoded, labels: list[str], batch_size: int, pad_token_id: int,
                 device: str, precision: str = "auto") -> list[list[str]]:
    """Word-level predictions of a PyTorch model (see ``word_tags``), under ``precision``'s autocast."""
    model.eval()
    precision = resolved_precision(device, precision)

    def forward(input_ids, attention_mask):
        with autocast(device, precision):
            return model(input_ids=input_ids, attention_mask=attention_mask).logits

    return word_tags(forward, data, labels, batch_size, pad_token_id, device)


def torch_forward(model: nn.Module) -> Forward:
    """A PyTorch model as a ``Forward``, in float32 (no autocast): what a deployed float model computes."""
    @torch.no_grad()
    def run(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    return run


@torch.no_grad()
def word_tags(forward: Forward, data: Encoded, labels: list[str], batch_size: int, pad_token_id: int,
              device: str = "cpu") -> list[list[str]]:
    """Word-level predictions of any forward (a PyTorch model, an ONNX session): the first sub-token's label per
    word; words cut by truncation are ``O``."""
    predicted = [None] * len(data)
    for indices in sorted_batches(data.lengths(), batch_size):
        batch = collate(data, indices, pad_token_id, device)
        best = forward(batch["input_ids"], batch["attention_mask"]).argmax(-1).cpu()
        for row, i in enumerate(indices):
            starts = data.word_starts[i]
            chosen = best[row, [max(p, 0) for p in starts]].tolist()
            tags = [labels[j] if p != NO_TOKEN else "O" for j, p in zip(chosen, starts)]
            predicted[i] = tags + ["O"] * (len(data.word_tags[i]) - len(tags))
    return predicted


def evaluate(model: nn.Module, data: Encoded, labels: list[str], batch_size: int, pad_token_id: int,
             device: str, precision: str = "auto") -> dict:
    predicted = predict_tags(model, data, labels, batch_size, pad_token_id, device, precision)
    return entity_scores(data.word_tags, predicted)


@dataclass
class EpochResult:
    epoch: int  # 0-based
    metrics: dict
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object


LossFn = Callable[[nn.Module, dict, list], torch.Tensor]  # (model, batch, sentence indices) -> scalar loss


def token_cross_entropy(model: nn.Module, batch: dict, indices: list, batches: str = "random") -> torch.Tensor:
    """Cross-entropy over the batch's labelled tokens, computed on its real tokens (``real_token_logits``: the
    unpadded forward for random batches, whose padding would otherwise be most of the compute)."""
    logits, real = real_token_logits(model, batch["input_ids"], batch["attention_mask"], batches)
    return F.cross_entropy(logits.float(), batch["labels"].flatten()[real], ignore_index=IGNORE_INDEX)


def fit(model: nn.Module, hparams: dict, data, settings: TrainSettings, loss_fn: LossFn | None = None,
        resume: Path | None = None) -> Iterator[EpochResult]:
    """Train ``model`` on ``data.train`` for ``settings.epochs``, evaluating on ``data.validation`` each epoch.

    ``loss_fn`` defaults to token cross-entropy (``token_cross_entropy``). ``resume`` is a checkpoint folder
    written by ``save_checkpoint``: training continues after its epoch.
    """
    loss_fn = loss_fn or functools.partial(token_cross_entropy, batches=settings.batches)
    torch.set_num_threads(settings.threads)
    keep_freed_memory()
    device = settings.device
    model.to(device)  # before the optimizer: a fused AdamW lives on its parameters' device
    optimizer = build_optimizer(model, hparams["learning_rate"], hparams["weight_decay"])
    steps_per_epoch = math.ceil(len(data.train) / settings.batch_size)
    scheduler = build_scheduler(optimizer, hparams["warmup_ratio"], steps_per_epoch * settings.epochs)
    first_epoch = 0 if resume is None else load_checkpoint(resume, model, optimizer, scheduler) + 1
    if resume is not None and first_epoch < settings.epochs and not (Path(resume) / OPTIMIZER_FILE).is_file():
        raise TunerError(f"{resume}: a last-epoch checkpoint holds no optimizer state, so it cannot continue "
                         f"training to epoch {settings.epochs}")
    precision = resolved_precision(device, settings.precision)
    lengths = data.train.lengths()
    batches = random_batches if settings.batches == "random" else length_grouped_batches
    for epoch in range(first_epoch, settings.epochs):
        set_seed(settings.seed + epoch)  # dropout draws per epoch: a resumed trial repeats an uninterrupted one
        model.train()
        # loss and tokens summed where they are computed: on a GPU, reading them each step would make the host
        # wait for every step before queueing the next; the loss is checked for NaN or inf every step on the CPU,
        # where reading costs nothing, and every CHECK_STEPS steps (and at the epoch's end) on a GPU
        started, steps = time.perf_counter(), 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        tokens = torch.zeros((), dtype=torch.long, device=device)
        check_every = 1 if device == "cpu" else CHECK_STEPS
        for step, indices in enumerate(batches(lengths, settings.batch_size, settings.seed + epoch)):
            batch = collate(data.train, indices, data.pad_token_id, device)
            with autocast(device, precision):
                loss = loss_fn(model, batch, indices)
            loss_sum += loss.detach()
            if (step + 1) % check_every == 0:
                check_finite(loss_sum, epoch, step, hparams)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += batch["attention_mask"].sum()
            steps += 1
        check_finite(loss_sum, epoch, steps - 1, hparams)
        tokens = int(tokens)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        scores = evaluate(model, data.validation, data.labels, settings.eval_batch_size, data.pad_token_id, device,
                          precision)
        metrics = {"val_f1": scores["f1"], "val_precision": scores["precision"], "val_recall": scores["recall"],
                   "train_loss": float(loss_sum) / steps, "epoch": epoch + 1, "train_seconds": train_seconds,
                   "eval_seconds": time.perf_counter() - started, "train_tokens_per_second": tokens / train_seconds,
                   "bf16": precision == "bf16", SIZE_METRIC: count_parameters(model)}
        log.info("epoch %d: %s", epoch + 1, metrics)
        yield EpochResult(epoch, metrics, model, optimizer, scheduler)


def save_checkpoint(folder: Path, result: EpochResult, optimizer: bool = True) -> None:
    """Model and optimizer tensors as safetensors, the rest as JSON: resumable without pickle.

    ``optimizer=False`` leaves out AdamW's two moments (twice the model's size): for a trial's last epoch, which
    nothing continues, the checkpoint is then a third of the size."""
    folder = Path(folder)
    save_model(result.model, folder)  # the same weights + config.json a best/ folder holds
    optimizer_state = result.optimizer.state_dict()
    if optimizer:
        tensors = {f"{index}.{name}": value.detach().cpu().contiguous()
                   for index, state in optimizer_state["state"].items() for name, value in state.items()}
        save_file(tensors, str(folder / OPTIMIZER_FILE))
    scheduler_state = {k: v for k, v in result.scheduler.state_dict().items() if k != "lr_lambdas"}
    state = {"epoch": result.epoch, "metrics": result.metrics, "param_groups": optimizer_state["param_groups"],
             "scheduler": scheduler_state}
    (folder / STATE_FILE).write_text(json.dumps(state))


def load_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler) -> int:
    """Restore what ``save_checkpoint`` wrote into live objects; returns the checkpoint's epoch (0-based).
    Without an optimizer file (a last-epoch checkpoint) only the model is restored."""
    folder = Path(folder)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    state = json.loads((folder / STATE_FILE).read_text())
    if not (folder / OPTIMIZER_FILE).is_file():
        return state["epoch"]
    per_param: dict = {}
    for key, value in load_file(str(folder / OPTIMIZER_FILE)).items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    scheduler_state = scheduler.state_dict()
    scheduler_state.update(state["scheduler"])
    scheduler.load_state_dict(scheduler_state)
    return state["epoch"]
