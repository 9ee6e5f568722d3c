"""ONNX for token classifiers: export with torch's exporter, int8 quantization (dynamic, or static with
calibration) with ONNX Runtime's own tools, and inference on the CPU. The only module that imports onnx and
onnxruntime; it writes no kernels.

A model file has inputs ``input_ids`` and ``attention_mask`` (int64, dynamic batch and sequence axes) and output
``logits`` (float32, ``[batch, sequence, labels]``), so ``tuner.training.word_tags`` scores it as it scores a
PyTorch model.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import io
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_dynamic, quantize_static)
from torch import nn

from tuner.errors import TunerError, quieted

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "logits"
OPSET = 18  # the exporter's native opset: no version conversion


@contextlib.contextmanager
def quiet_exporter():
    """The exporter's progress lines, its 'torchvision is not installed' notices and its harmless warnings off."""
    with quieted("torch.onnx"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def export(model: nn.Module, path: Path) -> None:
    """Write ``model`` (float32, on the CPU) as one self-contained ONNX file with dynamic batch and sequence."""
    model = model.float().cpu().eval()
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]])  # two lengths: the mask is really used
    mask = (ids != 0).long()
    dynamic = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(model, (ids, mask), str(path), dynamo=True, opset_version=OPSET, external_data=False,
                          verbose=False, input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_shapes={name: {0: dynamic["batch"], 1: dynamic["sequence"]} for name in INPUTS})


@dataclass(frozen=True)
class Quantization:
    """One way to quantize: every weight matrix and embedding table to int8, with some parts left in float32; the
    activations quantized per batch at run time (dynamic), or (``calibration`` set) with fixed ranges measured on
    calibration sentences by that method (static, QDQ)."""

    name: str
    per_channel: bool = False
    unsigned: bool = False  # uint8 weights instead of int8 (activations are uint8 either way)
    keep_nodes: tuple[str, ...] = field(default=())  # graph nodes left in float32 by name (tuner.int8's fallbacks)
    # the kept MatMul/Gemm nodes' weights stored as per-channel int8 all the same (dequantized at load, computed in
    # float32): the file stays int8-sized while those nodes' activations are not quantized
    int8_weights: bool = False
    source: str = ""  # the float model it quantizes: "" the model as searched, else a fine-tuned copy (tuner.int8)
    calibration: str = ""  # static quantization's calibration method (a CALIBRATIONS key); "" dynamic

    def record(self) -> dict:
        return {"name": self.name, "per_channel": self.per_channel, "weights": "uint8" if self.unsigned else "int8",
                "activations": f"static, {self.calibration} calibration" if self.calibration else "dynamic",
                "float32_nodes": list(self.keep_nodes),
                "float32_node_weights": "int8" if self.int8_weights and self.keep_nodes else "float32",
                "source": self.source or "searched"}


# The whole-model recipes, tried in this order until one keeps F1 within the gate: the smallest files first
# (per-tensor, then per-channel scales, with int8 or uint8 weights). Where none passes, tuner.int8 keeps the most
# sensitive nodes in float32 on top of the best of them.
RECIPES = (
    Quantization("int8"),
    Quantization("int8, per-channel weights", per_channel=True),
    Quantization("int8, per-channel uint8 weights", per_channel=True, unsigned=True),
)
# Static quantization (QDQ: the activations' int8 ranges fixed from calibration sentences, uint8 activations and
# int8 per-channel weights, as ONNX Runtime advises for x86), tried after the dynamic recipes with each calibration
# method: the calibration range of the whole observed values, a percentile of them, or the range minimising the
# KL divergence of the quantized histogram.
CALIBRATIONS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}
STATIC_RECIPES = tuple(Quantization(f"int8 static ({method} calibration), per-channel weights", per_channel=True,
                                    calibration=method) for method in CALIBRATIONS)
QUANTIZED_OPS = ("MatMul", "Gemm", "Gather")  # what dynamic quantization turns to int8 in a BERT graph


def prepare(float_path: Path, prepared_path: Path) -> None:
    """ONNX Runtime's pre-processing for quantization, once per model: every try quantizes the same graph."""
    # symbolic shape inference cannot follow BERT's dynamic sequence axis; ONNX's own shape inference does
    quant_pre_process(str(float_path), str(prepared_path), skip_symbolic_shape=True)


def quantizable_nodes(prepared_path: Path, float_path: Path) -> dict[str, str]:
    """The nodes dynamic quantization would turn to int8 (MatMul/Gemm and Gather nodes reading a weight), in graph
    order, each with the PyTorch module it computes (``bert.encoder.layer.0.output.dense``), read from the
    exporter's name scopes in the float file; the weight's name where the exporter left none."""
    graph = onnx.load(str(prepared_path))
    weights = {initializer.name for initializer in graph.graph.initializer}
    modules = {}
    for node in onnx.load(str(float_path)).graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if scopes:
            path = ast.literal_eval(scopes)
            modules[node.name] = path[-2] if len(path) > 1 else path[-1]
    found = {}
    for node in graph.graph.node:
        weight = next((name for name in node.input if name in weights), None)
        if node.op_type in QUANTIZED_OPS and weight is not None:
            found[node.name] = modules.get(node.name) or weight.removesuffix(".weight")
    return found


class Feeds(CalibrationDataReader):
    """Calibration batches (``input_ids`` and ``attention_mask`` tensors) as ONNX Runtime's calibrator reads them."""

    def __init__(self, batches: list[dict]):
        self.batches = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {name: batch[name].cpu().numpy().astype(np.int64) for name in INPUTS}


def quantize(float_path: Path, out_path: Path, how: Quantization, *, only: list[str] | None = None,
             prepared: Path | None = None, calibration: list[dict] | None = None) -> None:
    """Quantization to int8 weights, after ONNX Runtime's pre-processing (``prepared``: done already): dynamic, or
    static with activation ranges calibrated on ``calibration`` (batches, required then); ``only``: quantize these
    nodes and no other (a sensitivity probe)."""
    if how.calibration and not calibration:
        raise ValueError(f"{how.name}: static quantization needs calibration batches")
    with tempfile.TemporaryDirectory() as work:
        if prepared is None:
            prepared = Path(work) / "prepared.onnx"
            prepare(float_path, prepared)
        weights = QuantType.QUInt8 if how.unsigned else QuantType.QInt8
        # ONNX Runtime's quantizers write their notes to the root logger, its histogram calibrators to stdout
        with quieted(), contextlib.redirect_stdout(io.StringIO()):
            if how.calibration:
                quantize_static(str(prepared), str(out_path), Feeds(calibration), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(QUANTIZED_OPS), per_channel=how.per_channel,
                                activation_type=QuantType.QUInt8, weight_type=weights, nodes_to_quantize=only,
                                nodes_to_exclude=list(how.keep_nodes),
                                calibrate_method=CALIBRATIONS[how.calibration])
            else:
                quantize_dynamic(str(prepared), str(out_path), per_channel=how.per_channel, weight_type=weights,
                                 nodes_to_quantize=only, nodes_to_exclude=list(how.keep_nodes))
    if how.int8_weights and how.keep_nodes:
        int8_weights_only(out_path, how.keep_nodes)


def int8_weights_only(path: Path, nodes: tuple[str, ...]) -> None:
    """Rewrite ``path`` in place so that the named MatMul/Gemm nodes read their weight through a DequantizeLinear
    of a per-output-channel symmetric int8 copy: stored at a quarter of float32's bytes, computed in float32 (their
    activations are never quantized, which is what makes a sensitive node sensitive). Gather nodes (embedding
    tables) and weights read by any other node stay as they are."""
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {initializer.name: initializer for initializer in graph.initializer}
    readers = collections.Counter(name for node in graph.node for name in node.input)
    dequantized = []
    for node in graph.node:
        if node.name not in nodes or node.op_type not in ("MatMul", "Gemm"):
            continue
        name = node.input[1]  # B, the weight: an initializer no other node reads
        if name not in initializers or readers[name] != 1:
            continue
        weight = numpy_helper.to_array(initializers[name]).astype(np.float32)
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
        axis = 0 if transposed else weight.ndim - 1  # the output features' axis: [N, K] under transB, else [.., K, N]
        reduce = tuple(i for i in range(weight.ndim) if i != axis)
        scale = np.maximum(np.abs(weight).max(axis=reduce), 1e-12) / 127.0
        shape = [-1 if i == axis else 1 for i in range(weight.ndim)]
        quantized = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_int8"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_int8_scale"),
                                  numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8),
                                                          f"{name}_int8_zero_point")])
        dequantized.append(onnx.helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_int8_scale",
                                                                      f"{name}_int8_zero_point"], [name],
                                                 name=f"{name}_DequantizeLinear", axis=axis))
    if dequantized:
        for index, node in enumerate(dequantized):  # a node must come before its readers: at the top
            graph.node.insert(index, node)
        onnx.save(model, str(path))


def session(path: Path, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a checked model file; a file that is not one is a one-line TunerError."""
    path = Path(path)
    if not path.is_file():
        raise TunerError(f"{path}: no such file")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # ValidationError, and the parser's errors on garbage
        raise TunerError(f"{path}: not a valid ONNX model ({str(exc).splitlines()[0][:160]})") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        loaded = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        raise TunerError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:160]})") from None
    names = {i.name for i in loaded.get_inputs()}, {o.name for o in loaded.get_outputs()}
    if not set(INPUTS) <= names[0] or OUTPUT not in names[1]:
        raise TunerError(f"{path}: not a token classifier (needs inputs {', '.join(INPUTS)} and output {OUTPUT})")
    return loaded


def forward(loaded: ort.InferenceSession):
    """``(input_ids, attention_mask) -> logits`` through the session, tensors in and out."""
    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": input_ids.cpu().numpy().astype(np.int64),
                 "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        return torch.from_numpy(loaded.run([OUTPUT], feeds)[0])
    return run


def runtime_version() -> str:
    return ort.__version__
