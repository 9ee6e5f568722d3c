"""Student stage: distil the teacher into a model under a parameter budget (SVD-factorized embeddings and some of
the teacher's layers: the bottom ones, or every k-th, by ``layer_reach``). The teacher's logits (and, when a trial
may weigh the hidden-state term, every layer's output) are computed once per search; trials never run the
teacher."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from tuner.config import IGNORE_INDEX, Profile, TrainSettings
from tuner.data import Encoded, TaskData, sorted_batches
from tuner.errors import TunerError
from tuner.models import (ModelState, cut_student, embedding_svd, keep_layers, model_from_state,
                          parameters_from_parts, shape_limits, size_parts, student_parameters,
                          student_shape)
from tuner.registry import Stage, StageContext
from tuner.training import EpochResult, LossFn, collate, fit, set_seed
from tuner.unpadded import real_token_logits


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)``.

    student_logits, teacher_logits: [batch, seq, labels] (or [tokens, labels]); labels: [batch, seq] (or [tokens]),
    IGNORE_INDEX where unlabelled.
    Both terms average over labelled tokens only; the KL takes student log-probabilities and teacher
    probabilities (``F.kl_div(input=log q, target=p)`` computes KL(p || q)).
    """
    labelled = labels != IGNORE_INDEX
    student = student_logits[labelled].float()
    teacher = teacher_logits[labelled].float()
    ce_loss = F.cross_entropy(student, labels[labelled])
    kd_loss = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.softmax(teacher / temperature, dim=-1),
                       reduction="batchmean")
    return alpha * temperature**2 * kd_loss + (1 - alpha) * ce_loss


@torch.no_grad()
def compute_teacher_outputs(teacher, data: Encoded, batch_size: int, pad_token_id: int, device: str,
                            hidden: bool = False) -> tuple[list, list | None]:
    """In one pass: raw (untempered) teacher logits per sentence, [tokens, labels] each, so every trial can pick
    its T; with ``hidden``, also every encoder layer's output per sentence, ``[layers, tokens, hidden]`` in float16
    (half the memory; the hidden-state term compares them in float32), else None."""
    teacher.eval().to(device)
    logits = [None] * len(data)
    layers = [None] * len(data) if hidden else None
    for indices in sorted_batches(data.lengths(), batch_size):
        batch = collate(data, indices, pad_token_id, device)
        out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=hidden)
        # full precision even on GPUs: computed once per search, these are every trial's targets
        scores = out.logits.float().cpu()
        states = torch.stack(out.hidden_states[1:], dim=1).float().cpu() if hidden else None  # [b, layers, w, h]
        for row, i in enumerate(indices):
            logits[i] = scores[row, : len(data.input_ids[i])].clone()
            if hidden:
                layers[i] = states[row, :, : len(data.input_ids[i])].to(torch.float16).clone()
    return logits, layers


def compute_teacher_logits(teacher, data: Encoded, batch_size: int, pad_token_id: int, device: str) -> list:
    """The teacher's logits alone (``compute_teacher_outputs``)."""
    return compute_teacher_outputs(teacher, data, batch_size, pad_token_id, device)[0]


@dataclass
class StudentInputs:
    teacher: ModelState
    svd: tuple
    teacher_logits: list  # per training sentence, raw
    num_layers: int  # defaults when the search space does not search them
    factor_dim: int
    max_params: int
    size_parts: tuple  # tuner.models.size_parts of the teacher: a shape's parameters without building it
    teacher_hidden: list | None = None  # per training sentence, [layers, tokens, hidden]; only if beta can be > 0


@dataclass(frozen=True)
class StudentSizing:
    """What ``shape_size`` and ``student_budget`` read, from the teacher alone."""

    num_layers: int
    factor_dim: int
    max_params: int
    size_parts: tuple


def sizing(teacher, profile: Profile) -> StudentSizing:
    return StudentSizing(*student_shape(teacher, profile.max_params), profile.max_params, size_parts(teacher))


def prepare(context: StageContext) -> StudentInputs:
    """The teacher's logits on every training sentence, its embedding's SVD, and the deepest (then widest)
    student under the budget, used when the search space does not search the shape."""
    teacher, profile, task = context.teacher, context.profile, context.task
    sized = sizing(teacher, profile)  # the default shape and the size parts, as the early budget check reads them
    logits, hidden = compute_teacher_outputs(teacher, task.train, profile.eval_batch_size, task.pad_token_id,
                                             context.device,
                                             hidden=context.ranges.get("beta", (0.0, 0.0))[1] > 0)  # a trial may use it
    teacher.cpu()
    return StudentInputs(ModelState.of(teacher), embedding_svd(teacher.get_input_embeddings().weight), logits,
                         sized.num_layers, sized.factor_dim, sized.max_params, sized.size_parts, hidden)


def padded_teacher_logits(teacher_logits: list, indices: list, width: int) -> torch.Tensor:
    rows = [F.pad(teacher_logits[i], (0, 0, 0, width - teacher_logits[i].shape[0])) for i in indices]
    return torch.stack(rows)


def hidden_state_loss(student_layers: list, teacher_hidden: list, teacher_layers: list, indices: list, width: int,
                      real: torch.Tensor) -> torch.Tensor:
    """Mean over the student's layers of the MSE between its output and the output of the teacher layer it was
    cut from (``teacher_layers[j]`` for student layer j), on the batch's real tokens."""
    losses = []
    for layer, source in zip(student_layers, teacher_layers):
        rows = [F.pad(teacher_hidden[i][source].float(), (0, 0, 0, width - teacher_hidden[i].shape[1]))
                for i in indices]  # float32 before stacking: CPU autocast refuses float16 inputs
        target = torch.stack(rows).to(layer.device).flatten(0, 1)[real]  # cached on the CPU, ``real`` on the device
        losses.append(F.mse_loss(layer.float(), target))
    return torch.stack(losses).mean()


def student_loss(teacher_logits: list, temperature: float, alpha: float, batches: str, beta: float = 0.0,
                 teacher_hidden: list | None = None, teacher_layers: list | None = None) -> LossFn:
    """``fit``'s loss for one trial: ``distillation_loss`` on the batch's real tokens against the cached teacher
    logits of the same sentences, plus ``beta`` times ``hidden_state_loss`` when ``beta`` > 0."""
    def loss_fn(model, batch, indices):
        layers = [] if beta > 0 else None
        student_logits, real = real_token_logits(model, batch["input_ids"], batch["attention_mask"], batches, layers)
        width = batch["input_ids"].shape[1]
        teacher = padded_teacher_logits(teacher_logits, indices, width).to(student_logits.device)
        loss = distillation_loss(student_logits, teacher.flatten(0, 1)[real], batch["labels"].flatten()[real],
                                 temperature, alpha)
        if beta > 0:
            loss = loss + beta * hidden_state_loss(layers, teacher_hidden, teacher_layers, indices, width, real)
        return loss
    return loss_fn


def train(hparams: dict, task: TaskData, inputs: StudentInputs, settings: TrainSettings,
          resume: Path | None = None) -> Iterator[EpochResult]:
    set_seed(settings.seed)
    num_layers = int(hparams.get("num_layers", inputs.num_layers))
    factor_dim = int(hparams.get("factor_dim", inputs.factor_dim))
    teacher = model_from_state(inputs.teacher)
    size = shape_size(inputs, hparams)
    if size > inputs.max_params:  # the search samples inside the budget: this is a retrain's guard
        raise ValueError(f"student with {num_layers} layers and E={factor_dim} has {size} parameters, "
                         f"over the budget of {inputs.max_params}")
    depth = len(teacher.base_model.encoder.layer)
    reach = float(hparams.get("layer_reach", 1.0))  # absent (configs from before layer_reach): every k-th layer
    teacher_layers = keep_layers(depth, num_layers, reach)
    student = cut_student(teacher, num_layers, factor_dim, inputs.svd, reach)
    del teacher
    hparams = {**hparams, "learning_rate": trained_learning_rate(hparams, depth, num_layers)}
    beta = float(hparams.get("beta", 0.0))
    if beta > 0 and inputs.teacher_hidden is None:
        raise ValueError(f"beta {beta:g} needs the teacher's hidden states, which prepare computes only when the "
                         "search space's (or the config's) beta can be above 0")
    loss_fn = student_loss(inputs.teacher_logits, float(hparams["temperature"]), float(hparams["alpha"]),
                           settings.batches, beta, inputs.teacher_hidden, teacher_layers)
    yield from fit(student, hparams, task, settings, loss_fn, resume=resume)


def fine_tuning(context: StageContext, model, hparams: dict, batches: str) -> tuple[LossFn, float]:
    """A trained student's own distillation loss (its temperature and alpha) against the teacher's logits on the
    context's training sentences, computed here once (the hidden-state term stays out: a trained student's layers
    have found their role), and the rate it trained at (``trained_learning_rate``, its depth against the
    teacher's)."""
    task, teacher = context.task, context.teacher
    logits = compute_teacher_logits(teacher, task.train, context.profile.eval_batch_size, task.pad_token_id,
                                    context.device)
    teacher.cpu()
    rate = trained_learning_rate(hparams, len(teacher.base_model.encoder.layer), model.config.num_hidden_layers)
    return student_loss(logits, float(hparams["temperature"]), float(hparams["alpha"]), batches), rate


def trained_learning_rate(hparams: dict, teacher_layers: int, num_layers: int) -> float:
    """The rate a student trains at. With ``lr_depth_power`` p, ``learning_rate`` is the rate of a student as deep
    as the teacher, and one with fewer layers trains at ``learning_rate * (teacher_layers / num_layers) ** p``:
    the best rate falls with depth (1-layer students on the cpu profile peaked near 5.4e-4, 2-layer ones near
    3.5e-4 and failed above 6e-4; docs/design.md), and one range of base rates then suits every depth of a
    front search. Without it (or at 0) the student trains at ``learning_rate`` itself."""
    power = float(hparams.get("lr_depth_power", 0.0))
    return float(hparams["learning_rate"]) * (teacher_layers / num_layers) ** power


def shape_size(inputs: StudentInputs, hparams: dict) -> int:
    """A config's student parameters, known before training."""
    return parameters_from_parts(inputs.size_parts, int(hparams.get("num_layers", inputs.num_layers)),
                                 int(hparams.get("factor_dim", inputs.factor_dim)))


def student_budget(inputs: StudentInputs) -> int:
    return inputs.max_params


def check_budget(profile: Profile, teacher, hyperparameters: dict | None = None) -> None:
    """--max-params below the smallest student is refused before any work (student_shape says so); with a config's
    hyperparameters (a retrain), a config over the budget it recorded is too, before the teacher's logits are
    computed, the size keys it leaves out taking the stage's default."""
    if teacher is None:
        return
    if hyperparameters is None:
        student_shape(teacher, profile.max_params)
        return
    shape = dict(hyperparameters)
    if not {"num_layers", "factor_dim"} <= shape.keys():
        try:
            num_layers, factor_dim = student_shape(teacher, profile.max_params)
        except TunerError:
            raise TunerError(f"training.max_params: {profile.max_params} fits no student of this teacher") from None
        shape = {"num_layers": num_layers, "factor_dim": factor_dim, **shape}
    size = student_parameters(teacher, int(shape["num_layers"]), int(shape["factor_dim"]))
    if size > profile.max_params:
        raise TunerError(f"hyperparameters: a student of {size} parameters, over training.max_params "
                         f"({profile.max_params})")


def student_epochs(profile: Profile) -> int:
    """A student epoch costs a fraction of a teacher's: the profile may give the student more of them."""
    return profile.student_epochs or profile.epochs


STAGE = Stage(name="student", order=30,
              description="{num_layers}-layer student (E={factor_dim}) distilled from the teacher",
              required=("learning_rate", "weight_decay", "warmup_ratio", "temperature", "alpha"),
              optional=("factor_dim", "num_layers", "beta", "lr_depth_power", "layer_reach"), prepare=prepare,
              train=train, needs_teacher=True,
              epochs=student_epochs, sized_by=("num_layers", "factor_dim"), front_only=("beta",), size=shape_size,
              budget=student_budget, sizing=sizing, check=check_budget, limits=shape_limits, fine_tuning=fine_tuning)
