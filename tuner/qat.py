"""Quantization-aware fine-tuning for int8 deployment: a trained model fine-tuned for a short while with its
forward computing what ONNX Runtime's dynamic int8 will compute, so its weights settle where rounding costs the
least; tuner.deploy then exports and quantizes it as it quantizes any float model.

The fake quantization follows ``quantize_dynamic`` with per-channel int8 weights (tuner.onnx_io), read off the
files it writes: each Linear's weight rounded to int8 per output channel, symmetric; each embedding table to
uint8 per tensor, asymmetric; each Linear's input to uint8 per tensor, asymmetric, from its own range at every
forward (``DynamicQuantizeLinear``). Gradients pass straight through
the rounding (torch's ``fake_quantize_*`` ops). The loss is the stage's own (``Stage.fine_tuning``): the
student's distillation loss against the teacher's logits, token cross-entropy for the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch
from torch import nn
from torch.nn.utils import parametrize

from tuner.config import TrainSettings
from tuner.training import fit

LEARNING_RATE_SCALE = 0.1  # of the searched learning rate: the model is trained already, rounding moves it little
WARMUP_RATIO = 0.1
INT8, UINT8 = (-127, 127), (0, 255)  # ONNX Runtime's symmetric int8 weights leave -128 out


def asymmetric_uint8(value: torch.Tensor) -> torch.Tensor:
    """``value`` as uint8 per tensor gives it back: its range widened to hold 0, in 255 steps (ONNX Runtime's
    ``DynamicQuantizeLinear`` for activations, and its per-tensor quantization of embedding tables)."""
    low, high = value.detach().min().clamp(max=0), value.detach().max().clamp(min=0)
    scale = ((high - low) / 255).clamp(min=1e-12)
    zero_point = torch.round(-low / scale).clamp(*UINT8).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(value, scale.reshape(1), zero_point.reshape(1), *UINT8)


class WeightFakeQuant(nn.Module):
    """A weight parametrization: the weight as int8 quantization gives it back: a Linear's per output channel
    (its rows), symmetric, in [-127, 127] steps of max |w| / 127; an embedding table as ``asymmetric_uint8``."""

    def __init__(self, per_channel: bool):
        super().__init__()
        self.per_channel = per_channel

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.per_channel:
            return asymmetric_uint8(weight)
        scale = (weight.detach().abs().amax(dim=1) / 127).clamp(min=1e-12)
        return torch.fake_quantize_per_channel_affine(weight, scale, torch.zeros_like(scale, dtype=torch.int32),
                                                      0, *INT8)


def activation_fake_quant(module: nn.Module, args: tuple) -> tuple:
    """A Linear's forward pre-hook: its input as ``asymmetric_uint8`` gives it back."""
    x = args[0]
    return (asymmetric_uint8(x.float()).to(x.dtype), *args[1:])


@contextlib.contextmanager
def fake_quantized(model: nn.Module):
    """``model`` computing its int8 forward for the duration; afterwards its own float weights (trained under the
    rounding) are back in place, with no parametrization or hook left."""
    hooks, parametrized = [], []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            parametrize.register_parametrization(module, "weight", WeightFakeQuant(isinstance(module, nn.Linear)))
            parametrized.append(module)
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_pre_hook(activation_fake_quant))
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for module in parametrized:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def fine_tune(model: nn.Module, loss_fn, trained_rate: float, hyperparameters: dict, task,
              settings: TrainSettings) -> dict:
    """Fine-tune ``model`` in place under ``fake_quantized`` for ``settings.epochs`` with ``loss_fn`` (None: token
    cross-entropy) at ``LEARNING_RATE_SCALE`` of the rate it trained at, its other ``hyperparameters`` (weight
    decay) kept; float32 (the rounding is float32's) and length-grouped padded batches (each Linear then sees its
    whole input through its hook). Returns what was done, for deploy.json."""
    rate = float(trained_rate) * LEARNING_RATE_SCALE
    tuned = dict(hyperparameters, learning_rate=rate, warmup_ratio=WARMUP_RATIO)
    settings = dataclasses.replace(settings, precision="fp32", batches="length")
    started, curve = time.perf_counter(), []
    with fake_quantized(model):
        for result in fit(model, tuned, task, settings, loss_fn):
            curve.append(round(result.metrics["val_f1"], 6))
    model.cpu().eval()
    return {"epochs": settings.epochs, "learning_rate": rate, "warmup_ratio": WARMUP_RATIO,
            "loss": "the stage's own" if loss_fn is not None else "token cross-entropy",
            "fake_quantized_validation_f1": curve, "seconds": round(time.perf_counter() - started, 1)}
