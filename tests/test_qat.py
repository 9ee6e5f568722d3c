"""Quantization-aware fine-tuning (tuner.qat): its fake-quantized forward computes what ONNX Runtime's dynamic
int8 computes, training happens under it with the stage's own loss, and the model comes back a plain float
model."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from tests.test_deploy import ragged_batch
from tuner import onnx_io, qat
from tuner.config import IGNORE_INDEX, TrainSettings
from tuner.data import CONLL_LABELS, Sentence, TaskData, encode
from tuner.training import collate


def test_the_fake_quantized_forward_computes_what_onnx_runtimes_int8_computes(tiny_model, tmp_path):
    """Per-channel int8 from ONNX Runtime against the same model's fake-quantized forward: a hundred times closer
    than the float model is (measured: 1e-5 of it); afterwards the model is float again, with nothing attached."""
    model = tiny_model.eval()
    with torch.no_grad():  # a wide weight range, so rounding moves the logits measurably
        model.bert.encoder.layer[0].output.dense.weight[:, 3] *= 30
    onnx_io.export(model, tmp_path / "model.onnx")
    per_channel = next(r for r in onnx_io.RECIPES if r.per_channel and not r.unsigned)
    onnx_io.quantize(tmp_path / "model.onnx", tmp_path / "int8.onnx", per_channel)
    int8 = onnx_io.forward(onnx_io.session(tmp_path / "int8.onnx", 1))
    for lengths in ([9, 4, 6], [12]):
        ids, mask = ragged_batch(lengths)
        with torch.no_grad():
            float_logits = model(input_ids=ids, attention_mask=mask).logits
            with qat.fake_quantized(model):
                fake = model(input_ids=ids, attention_mask=mask).logits
            again = model(input_ids=ids, attention_mask=mask).logits
        reference = int8(ids, mask)
        float_error, fake_error = (float_logits - reference).abs().mean(), (fake - reference).abs().mean()
        assert fake_error < 0.01 * float_error, (fake_error, float_error)
        assert torch.equal(again, float_logits)
    assert not any(parametrize.is_parametrized(m) or m._forward_pre_hooks for m in model.modules())


def test_fine_tuning_trains_the_stages_own_loss_on_int8_weights(tokenizer):
    """The student's fine-tune loss is its distillation loss (T and alpha from its hyperparameters) against the
    teacher's logits, at the rate its depth trained at; every step of qat.fine_tune sees Linear weights on their int8 grid, and the weights it
    leaves are trained float ones, off that grid, with the model plain again."""
    from transformers import BertForTokenClassification

    from tuner.models import cut_student, tiny_config
    from tuner.config import resolve_profile
    from tuner.registry import StageContext
    from tuner.stages import student

    labels = list(CONLL_LABELS)
    config = tiny_config(len(tokenizer), labels)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    teacher = BertForTokenClassification(config).eval()
    with torch.no_grad():
        teacher.classifier.weight.mul_(40.0)
    sentences = [Sentence(("EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."),
                          ("B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O")),
                 Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER"))]
    data = encode(sentences, tokenizer, labels, 32, "first")
    task = TaskData(labels, data, data, data, tokenizer.pad_token_id, "mem")
    context = StageContext(resolve_profile("smoke", False, max_params=10**9), task, 0, teacher, len(tokenizer), "cpu")
    hparams = {"learning_rate": 1e-2, "weight_decay": 0.0, "warmup_ratio": 0.0, "temperature": 3.0, "alpha": 1.0,
               "lr_depth_power": 1.0}
    model = cut_student(teacher, 1, 8).eval()
    loss_fn, rate = student.STAGE.fine_tuning(context, model, hparams, "length")
    assert rate == 1e-2 * config.num_hidden_layers  # the rate a 1-layer student trained at (lr_depth_power 1)
    batch = collate(data, [0, 1], tokenizer.pad_token_id)
    with torch.no_grad():
        z_s = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        z_t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labelled = batch["labels"] != IGNORE_INDEX
        p = torch.softmax(z_t[labelled] / 3, -1)
        kl = (p * (torch.log(p) - torch.log_softmax(z_s[labelled] / 3, -1))).sum(-1).mean().item()
        assert math.isclose(loss_fn(model, batch, [0, 1]).item(), 9 * kl, rel_tol=1e-4)

    def on_grid(weight: torch.Tensor) -> bool:
        scaled = weight / (weight.abs().amax(dim=1, keepdim=True) / 127)
        return bool(torch.allclose(scaled, scaled.round(), atol=1e-3))

    seen = []

    def watched(model, batch, indices):
        seen.append(all(on_grid(m.weight.detach()) for m in model.modules() if isinstance(m, nn.Linear)))
        return loss_fn(model, batch, indices)

    before = model.classifier.weight.detach().clone()
    record = qat.fine_tune(model, watched, rate, hparams, task, TrainSettings(epochs=2, batch_size=1,
                                                                               eval_batch_size=8, seed=0, threads=1))
    assert seen and all(seen), seen
    assert not any(parametrize.is_parametrized(m) or m._forward_pre_hooks for m in model.modules())
    assert not on_grid(model.classifier.weight.detach()) and not torch.equal(model.classifier.weight, before)
    assert record["epochs"] == 2 and len(record["fake_quantized_validation_f1"]) == 2
    assert record["learning_rate"] == rate * qat.LEARNING_RATE_SCALE
