"""The distillation loss against hand computations, the student stage's wiring of temperature and alpha, and the
cached teacher logits against a fresh forward."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tuner.config import IGNORE_INDEX
from tuner.data import CONLL_LABELS, Sentence, encode
from tuner.stages.student import compute_teacher_logits, distillation_loss, padded_teacher_logits
from tuner.training import collate
from tuner.unpadded import unpadded_logits


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
    data = encode(sentences, tokenizer, list(CONLL_LABELS), 32, "all")
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
    data = encode(sentences, tokenizer, list(CONLL_LABELS), 32, "first")
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


def test_the_student_stage_wires_temperature_and_alpha_into_its_loss(tokenizer):
    """Through the stage's own ``train``: a one-batch epoch's train_loss is the loss of the initial student (the
    step comes after it), computed here independently from both models' padded forwards: cross-entropy at
    alpha = 0, T^2 * KL(teacher_T || student_T) at alpha = 1 (T = 1 and T = 3), and the mix in between. A stage
    that ignored T or alpha, or swapped them, fails."""
    from transformers import BertForTokenClassification

    from tuner.config import TrainSettings, resolve_profile
    from tuner.data import TaskData
    from tuner.models import cut_student, tiny_config
    from tuner.registry import StageContext
    from tuner.stages import student

    labels = list(CONLL_LABELS)
    config = tiny_config(len(tokenizer), labels)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0  # the loss is then a function
    torch.manual_seed(0)
    teacher = BertForTokenClassification(config).eval()
    with torch.no_grad():  # confident logits: KL is then far from its small-logit limit, where T^2 cancels T
        teacher.classifier.weight.mul_(40.0)
    sentences = [Sentence(("EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."),
                          ("B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O")),
                 Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
                 Sentence(("BRUSSELS", "1996-08-22"), ("B-LOC", "O"))]
    data = encode(sentences, tokenizer, labels, 32, "first")
    task = TaskData(labels, data, data, data, tokenizer.pad_token_id, "mem")
    profile = resolve_profile("smoke", False, max_params=10**9)
    inputs = student.STAGE.prepare(StageContext(profile, task, 0, teacher, len(tokenizer), "cpu"))
    settings = TrainSettings(epochs=1, batch_size=len(sentences), eval_batch_size=8, seed=0, threads=1,
                             precision="fp32")

    def stage_loss(temperature, alpha):
        hparams = {"learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "temperature": temperature,
                   "alpha": alpha, "num_layers": 1, "factor_dim": 8}
        (result,) = list(student.train(hparams, task, inputs, settings))
        return result.metrics["train_loss"]

    batch = collate(data, list(range(len(sentences))), tokenizer.pad_token_id)
    with torch.no_grad():
        initial = cut_student(teacher, 1, 8).eval()
        student_logits = initial(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labelled = batch["labels"] != IGNORE_INDEX
    z_s, z_t, y = student_logits[labelled], teacher_logits[labelled], batch["labels"][labelled]
    ce = -torch.log_softmax(z_s, -1).gather(1, y[:, None]).mean().item()

    def kl(t):
        p = torch.softmax(z_t / t, -1)
        return (p * (torch.log(p) - torch.log_softmax(z_s / t, -1))).sum(-1).mean().item()

    assert math.isclose(stage_loss(3.0, 0.0), ce, rel_tol=1e-4)
    assert math.isclose(stage_loss(1.0, 1.0), kl(1.0), rel_tol=1e-4)
    assert math.isclose(stage_loss(3.0, 1.0), 9 * kl(3.0), rel_tol=1e-4)
    assert math.isclose(stage_loss(2.0, 0.25), 0.25 * 4 * kl(2.0) + 0.75 * ce, rel_tol=1e-4)
    assert not math.isclose(9 * kl(3.0), kl(1.0), rel_tol=1e-2)  # the cases tell T's scaling apart


def test_the_hidden_state_term_compares_each_student_layer_with_the_teacher_layer_it_was_cut_from(tokenizer):
    """Through the stage's own ``train``: with beta > 0, a one-batch epoch's loss is the beta = 0 loss plus beta
    times the mean over student layers of the MSE against the cached teacher layer it came from (layers 1 and 3 of
    a 4-layer teacher for a 2-layer student), computed here from both models' padded forwards. Without beta in
    the space, prepare caches no hidden states."""
    from transformers import BertForTokenClassification

    from tuner.config import TrainSettings, resolve_profile
    from tuner.data import TaskData
    from tuner.models import cut_student, tiny_config
    from tuner.registry import StageContext
    from tuner.stages import student

    labels = list(CONLL_LABELS)
    config = tiny_config(len(tokenizer), labels)
    config.num_hidden_layers = 4
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    teacher = BertForTokenClassification(config).eval()
    sentences = [Sentence(("EU", "rejects", "German", "call", "."), ("B-ORG", "O", "B-MISC", "O", "O")),
                 Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER"))]
    data = encode(sentences, tokenizer, labels, 32, "first")
    task = TaskData(labels, data, data, data, tokenizer.pad_token_id, "mem")
    profile = resolve_profile("smoke", False, max_params=10**9)
    assert student.STAGE.prepare(StageContext(profile, task, 0, teacher, len(tokenizer), "cpu")).teacher_hidden is None
    inputs = student.STAGE.prepare(StageContext(profile, task, 0, teacher, len(tokenizer), "cpu",
                                                ranges={"beta": (0.0, 1.0)}))
    settings = TrainSettings(epochs=1, batch_size=len(sentences), eval_batch_size=8, seed=0, threads=1,
                             precision="fp32")

    def stage_loss(beta):
        hparams = {"learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "temperature": 2.0,
                   "alpha": 0.5, "num_layers": 2, "factor_dim": 8, "beta": beta}
        (result,) = list(student.train(hparams, task, inputs, settings))
        return result.metrics["train_loss"]

    batch = collate(data, [0, 1], tokenizer.pad_token_id)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ours = cut_student(teacher, 2, 8, inputs.svd).eval()(input_ids=batch["input_ids"],
                                                             attention_mask=batch["attention_mask"],
                                                             output_hidden_states=True).hidden_states[1:]
        theirs = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=True).hidden_states[1:]
    mse = sum(F.mse_loss(ours[j][mask], theirs[t][mask]).item() for j, t in enumerate((1, 3))) / 2
    assert mse > 1e-3
    assert math.isclose(stage_loss(0.5) - stage_loss(0.0), 0.5 * mse, rel_tol=2e-3)


def test_a_depth_scaled_learning_rate_trains_shallower_students_at_higher_rates(tokenizer, monkeypatch):
    """With ``lr_depth_power`` p, the stage's ``train`` hands ``fit`` the rate ``learning_rate * (teacher layers /
    num_layers) ** p`` (a 4-layer teacher: 2x for a 1-layer student at p = 0.5, 4x at p = 1, 1x for a 4-layer
    one); without the key, or at 0, the configured rate itself, so configs from before it train as they did."""
    from transformers import BertForTokenClassification

    from tuner.config import TrainSettings, resolve_profile
    from tuner.data import TaskData
    from tuner.models import tiny_config
    from tuner.registry import StageContext
    from tuner.stages import student

    labels = list(CONLL_LABELS)
    config = tiny_config(len(tokenizer), labels)
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    teacher = BertForTokenClassification(config).eval()
    data = encode([Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER"))], tokenizer, labels, 32, "first")
    task = TaskData(labels, data, data, data, tokenizer.pad_token_id, "mem")
    inputs = student.STAGE.prepare(StageContext(resolve_profile("smoke", False, max_params=10**9), task, 0,
                                                teacher, len(tokenizer), "cpu"))
    settings = TrainSettings(epochs=1, batch_size=1, eval_batch_size=8, seed=0, threads=1, precision="fp32")
    handed = []
    monkeypatch.setattr(student, "fit", lambda model, hparams, *args, **kwargs: iter(handed.append(hparams) or ()))

    def rate(num_layers, **power):
        handed.clear()
        hparams = {"learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "temperature": 2.0,
                   "alpha": 0.5, "num_layers": num_layers, "factor_dim": 8, **power}
        list(student.train(hparams, task, inputs, settings))
        (seen,) = handed
        assert seen["num_layers"] == num_layers  # the rest of the config passes through unchanged
        return seen["learning_rate"]

    assert math.isclose(rate(1), 1e-3)
    assert math.isclose(rate(1, lr_depth_power=0.0), 1e-3)
    assert math.isclose(rate(1, lr_depth_power=0.5), 2e-3)
    assert math.isclose(rate(1, lr_depth_power=1.0), 4e-3)
    assert math.isclose(rate(2, lr_depth_power=1.0), 2e-3)
    assert math.isclose(rate(4, lr_depth_power=0.5), 1e-3)
