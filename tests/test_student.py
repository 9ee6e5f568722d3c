"""The distillation loss against hand computations, and the cached teacher logits against a fresh forward."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tuner.config import IGNORE_INDEX
from tuner.data import CONLL_LABELS, Sentence, encode
from tuner.models import unpadded_logits
from tuner.stages.student import compute_teacher_logits, distillation_loss, padded_teacher_logits
from tuner.training import collate


def _example():
    student = torch.tensor([[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [9.0, 9.0, 9.0]]])
    teacher = torch.tensor([[[1.0, 1.5, -0.5], [2.0, -1.0, 0.0], [0.0, 0.0, 50.0]]])
    labels = torch.tensor([[0, 2, IGNORE_INDEX]])
    return student, teacher, labels


def _softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_alpha_zero_is_plain_cross_entropy():
    student, teacher, labels = _example()
    by_hand = -(math.log(_softmax([2.0, 0.5, -1.0])[0]) + math.log(_softmax([0.1, 0.2, 0.3])[2])) / 2
    assert math.isclose(distillation_loss(student, teacher, labels, 3.0, 0.0).item(), by_hand, rel_tol=1e-5)


def test_alpha_one_t_one_is_kl_teacher_to_student_and_t_squared_scales():
    student, teacher, labels = _example()

    def kl_by_hand(t):
        total = 0.0
        for s_row, t_row in (([2.0, 0.5, -1.0], [1.0, 1.5, -0.5]), ([0.1, 0.2, 0.3], [2.0, -1.0, 0.0])):
            p, q = _softmax(t_row, t), _softmax(s_row, t)
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        return total / 2

    assert math.isclose(distillation_loss(student, teacher, labels, 1.0, 1.0).item(), kl_by_hand(1.0), rel_tol=1e-5)
    assert math.isclose(distillation_loss(student, teacher, labels, 4.0, 1.0).item(), 16 * kl_by_hand(4.0),
                        rel_tol=1e-5)
    mixed = distillation_loss(student, teacher, labels, 2.0, 0.3).item()
    ce = distillation_loss(student, teacher, labels, 2.0, 0.0).item()
    assert math.isclose(mixed, 0.3 * 4 * kl_by_hand(2.0) + 0.7 * ce, rel_tol=1e-5)


def test_ignored_positions_contribute_nothing():
    student, teacher, labels = _example()
    base = distillation_loss(student, teacher, labels, 2.0, 0.5)
    student[0, 2] = torch.tensor([-30.0, 40.0, 7.0])
    teacher[0, 2] = torch.tensor([100.0, -100.0, 3.0])
    assert torch.equal(distillation_loss(student, teacher, labels, 2.0, 0.5), base)


def test_cached_teacher_logits_equal_a_fresh_forward(tiny_model, tokenizer):
    sentences = [Sentence(("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O")),
                 Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
                 Sentence(("BRUSSELS", "1996-08-22"), ("B-LOC", "O"))]
    data = encode(sentences, tokenizer, list(CONLL_LABELS), 32, True)
    cached = compute_teacher_logits(tiny_model, data, batch_size=2, pad_token_id=tokenizer.pad_token_id, device="cpu")
    indices = [2, 0, 1]
    batch = collate(data, indices, tokenizer.pad_token_id)
    with torch.no_grad():
        fresh = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    padded = padded_teacher_logits(cached, indices, fresh.shape[1])
    mask = batch["attention_mask"].bool()
    assert torch.allclose(padded[mask], fresh[mask], atol=1e-5)
    assert F.mse_loss(padded[~mask], torch.zeros_like(padded[~mask])) == 0


def test_unpadded_distillation_loss_equals_the_padded_one(tiny_model, tokenizer):
    """What the student trains on with random batches (tokens flattened, padding dropped) against the padded loss."""
    sentences = [Sentence(("EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."),
                          ("B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O")),
                 Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
                 Sentence(("BRUSSELS", "1996-08-22"), ("B-LOC", "O"))]
    data = encode(sentences, tokenizer, list(CONLL_LABELS), 32, False)
    torch.manual_seed(0)
    cached = [torch.randn(len(ids), len(CONLL_LABELS)) for ids in data.input_ids]
    indices = [1, 0, 2]
    batch = collate(data, indices, tokenizer.pad_token_id)
    teacher = padded_teacher_logits(cached, indices, batch["input_ids"].shape[1])
    tiny_model.eval()
    padded = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, real = unpadded_logits(tiny_model, batch["input_ids"], batch["attention_mask"])
    expected = distillation_loss(padded, teacher, batch["labels"], 3.0, 0.6)
    got = distillation_loss(logits, teacher.flatten(0, 1)[real], batch["labels"].flatten()[real], 3.0, 0.6)
    assert torch.allclose(got, expected, atol=1e-6)


def test_the_student_trains_with_fast_dropout(tiny_model, tokenizer):
    """The student stage swaps in fast_dropout (1.11x on its CPU step); the teacher stage keeps torch's dropout."""
    from tuner.config import TrainSettings
    from tuner.data import TaskData
    from tuner.models import FastDropout, ModelState
    from tuner.stages import student, teacher

    data = encode([Sentence(("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O"))] * 8, tokenizer,
                  list(CONLL_LABELS), 16, True)
    task = TaskData(list(CONLL_LABELS), data, data, data, tokenizer.pad_token_id, "mem")
    settings = TrainSettings(epochs=1, batch_size=4, eval_batch_size=8, seed=0, threads=1, batch_order="random")
    hparams = {"learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "temperature": 2.0, "alpha": 0.5}
    inputs = student.prepare(tiny_model, task, 1, 8, 10**9, 8, "cpu")
    (result,) = list(student.train(hparams, task, inputs, settings))
    dropouts = [m for m in result.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(type(m) is FastDropout for m in dropouts)
    (result,) = list(teacher.train(hparams, task, ModelState.of(tiny_model), settings))
    assert all(type(m) is torch.nn.Dropout for m in result.model.modules() if isinstance(m, torch.nn.Dropout))
