"""Training throughput and MFU of a bert-base-shaped token classifier under tuner's three ways of batching.

    python bench/gpu_probe.py --device cuda --out gpu_probe.json          # on a GPU: bert-base, bf16 autocast
    python bench/gpu_probe.py --device cpu --tiny --steps 4 --out x.json  # the CPU dry run: a 2-layer BERT

The model has ``transformers.BertConfig()``'s shape (hidden 768, 12 layers, 12 heads, intermediate 3072) with
random weights, the packaged MiniLM tokenizer's vocabulary (``--tokenizer``: another ``--model``'s, such as
``random:DIR`` offline) and the 9 CoNLL labels (``--tiny``: tuner's 2-layer, hidden-32 BERT instead). The sentences are CoNLL-2003 training sentences, selected and tokenized by tuner's own
code (``tuner.task.load_task``, the report split, a seeded subset), and each batching trains on the same ones:

    length      length-grouped batches (``tuner.data.length_grouped_batches``), padded per batch, the model's
                own padded forward and loss (``--batches length``)
    random      random batches (``tuner.data.random_batches``), padded per batch, the model's padded forward
    unpadded    random batches through ``tuner.training.token_cross_entropy(..., batches="random")``, which runs
                ``tuner.unpadded.real_token_logits``: every matmul outside attention on the real tokens only
                (tuner's default training step)

Every step is fit's, timed by ``bench/step_timer.py`` (collate, the loss under ``tuner.training.autocast``,
backward, clipping, the fused AdamW of ``tuner.training.build_optimizer``, zero_grad); the padded batchings run
the model's padded forward. ``--warmup`` steps run first and are not timed; then ``--steps`` steps are timed
(``torch.cuda.synchronize()`` on both ends).
MFU = 6 x non-embedding parameters x real tokens/s / peak dense bf16 FLOP/s of the GPU (from its name); the
probe also times a bf16 ``--matmul-size``^3 matmul, the ceiling it measures, and gives MFU against that too
(the only MFU where the GPU's peak is unknown, and on the CPU).

Prints one summary line; writes everything to ``--out`` (JSON). Only tuner, torch and transformers: no Ray.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_DATA, non_embedding_parameters, write_result  # noqa: E402
from bench.step_timer import StepTimer, matmul_flops, step_batches  # noqa: E402

import torch  # noqa: E402
from transformers import BertConfig, BertForTokenClassification  # noqa: E402

from tuner import registry  # noqa: E402
from tuner.cli import OneLineParser, positive_int  # noqa: E402
from tuner.config import PRECISIONS, RunSettings, resolve_profile  # noqa: E402
from tuner.models import label_maps, tiny_config  # noqa: E402
from tuner.task import load_task  # noqa: E402
from tuner.training import resolved_precision  # noqa: E402

SEED = 0
SPLIT = "report"
BATCHINGS = ("length", "random", "unpadded")
# Dense bf16 tensor-core peaks (FLOP/s, no sparsity), matched on torch.cuda.get_device_name(): first match wins.
PEAKS = ((("H200",), 989e12, "H200"),
         (("H100", "PCIE"), 756e12, "H100 PCIe"),
         (("H100", "HBM3"), 989e12, "H100 SXM"),
         (("H100", "SXM"), 989e12, "H100 SXM"))
MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}  # 8192^3 on a GPU; the CPU dry run's ceiling in a second, not minutes


def peak_flops(gpu_name: str | None) -> tuple[float | None, str | None]:
    """The dense bf16 peak of a GPU named ``gpu_name`` and which one it is taken to be; (None, None) unknown."""
    upper = (gpu_name or "").upper()
    if "NVL" in upper:  # the NVL boards (H100 NVL, H200 NVL) have lower peaks than the ones below
        return None, None
    for needles, peak, label in PEAKS:
        if all(needle in upper for needle in needles):
            return peak, label
    return None, None


def run_settings(args: argparse.Namespace) -> RunSettings:
    """The settings a ``python -m tuner.run --model TOKENIZER`` call with these sizes has (as bench/common.py's):
    that model's tokenizer, the report split, ``--train-sentences`` training sentences (validation and test: one
    each, since nothing is evaluated)."""
    train = args.train_sentences or (args.warmup + args.steps) * args.batch_size  # one pass covers every step
    profile = resolve_profile("cpu", False, model=args.tokenizer, epochs=1, batch_size=args.batch_size,
                              max_length=args.max_length, train_sentences=train, eval_sentences=1, test_sentences=1)
    return RunSettings(stages=(registry.by_name("teacher"),), trials=1, profile=profile, data=str(args.data),
                       split=SPLIT, seed=SEED)


def build_model(labels: list[str], vocab_size: int, tiny: bool, max_length: int) -> torch.nn.Module:
    """bert-base's shape (``BertConfig()``'s defaults) with random weights, or tuner's tiny BERT."""
    torch.manual_seed(SEED)
    if tiny:
        config = tiny_config(vocab_size, labels)
        config.max_position_embeddings = max(config.max_position_embeddings, max_length)
    else:
        config = BertConfig(vocab_size=vocab_size, **label_maps(labels))
    return BertForTokenClassification(config)


def measure(batching: str, task, model, device: str, precision: str, args) -> dict:
    """Warm-up steps, then ``--steps`` timed training steps of ``batching``, with an optimizer of its own."""
    batches = step_batches(task.train.lengths(), "length" if batching == "length" else "random", args.batch_size,
                           SEED, args.warmup + args.steps)
    timer = StepTimer(model, task, device, precision, "unpadded" if batching == "unpadded" else "padded")
    return {"batching": batching, **timer.run(batches, args.warmup)}


def pick_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("python bench/gpu_probe.py: error: --device cuda, but torch sees no CUDA device")
    return choice


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python bench/gpu_probe.py", description=__doc__.strip().splitlines()[0])
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda when available")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="tuner.training.autocast's: auto is bf16 where the device has native bf16 (every CUDA GPU "
                        "with bf16)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CoNLL files (train.txt)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sentences per training batch")
    p.add_argument("--steps", type=positive_int, default=60, help="timed steps per batching")
    p.add_argument("--warmup", type=positive_int, default=10, help="untimed steps first, per batching")
    p.add_argument("--train-sentences", type=positive_int,
                   help="training sentences (default: (warmup + steps) x batch size, one pass)")
    p.add_argument("--max-length", type=positive_int, default=128, help="sub-tokens per sentence, [CLS] and [SEP] in")
    p.add_argument("--matmul-size", type=positive_int,
                   help=f"side of the bf16 ceiling matmul (default: {MATMUL_SIZE['cuda']} on CUDA, "
                        f"{MATMUL_SIZE['cpu']} on the CPU)")
    p.add_argument("--threads", type=positive_int, help="torch's CPU threads (default: torch's own choice)")
    p.add_argument("--tokenizer", default="minilm",
                   help="the --model whose tokenizer is used (default: the packaged MiniLM; random:DIR offline)")
    p.add_argument("--tiny", action="store_true", help="tuner's 2-layer hidden-32 BERT (the CPU dry run)")
    p.add_argument("--out", type=Path, required=True, help="the JSON file the measurements are written to")
    return p


def machine(device: str) -> dict:
    record = {"device": device, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        record.update(gpu_name=properties.name, gpu_memory_bytes=properties.total_memory,
                      cuda=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported())
    return record


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not (args.data / "train.txt").is_file():
        parser().error(f"--data {args.data}: no train.txt there")
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolved_precision(device, args.precision)
    record = machine(device)
    settings = run_settings(args)
    task, tokenizer = load_task(settings, None)
    model = build_model(task.labels, len(tokenizer), args.tiny, args.max_length).to(device)
    non_embedding = non_embedding_parameters(model)
    results = []
    for batching in BATCHINGS:
        results.append(measure(batching, task, model, device, precision, args))
        if device == "cuda":
            torch.cuda.empty_cache()
    size = args.matmul_size or MATMUL_SIZE[device]
    ceiling = matmul_flops(size, size, size, torch.bfloat16, device)
    peak, peak_label = peak_flops(record.get("gpu_name")) if device == "cuda" else (None, None)
    for result in results:
        flops = 6 * non_embedding * result["real_tokens_per_second"]
        result.update(model_flops_per_second=flops, mfu=flops / peak if peak else None,
                      mfu_vs_matmul=flops / ceiling)
    best = max(results, key=lambda r: r["real_tokens_per_second"])
    record.update(model="tiny" if args.tiny else "bert-base (BertConfig() defaults, random weights)",
                  precision=precision, parameters=sum(p.numel() for p in model.parameters()),
                  non_embedding_parameters=non_embedding, vocab_size=len(tokenizer), labels=len(task.labels),
                  sentences=len(task.train), batch_size=args.batch_size, max_length=args.max_length,
                  peak_flops_per_second=peak, peak_name=peak_label, matmul_size=size,
                  matmul_bf16_flops_per_second=ceiling, batchings=results, best_batching=best["batching"],
                  max_memory_bytes=torch.cuda.max_memory_allocated() if device == "cuda" else None,
                  command="python bench/gpu_probe.py " + " ".join(sys.argv[1:] if argv is None else argv))
    write_result(args.out, record)
    where = record.get("gpu_name") or "CPU"
    basis = f"of {peak_label} peak" if peak else f"of the measured {size}^3 matmul"
    rows = ", ".join(f"{r['batching']} {r['real_tokens_per_second']:,.0f} real tok/s "
                     f"(MFU {100 * (r['mfu'] if peak else r['mfu_vs_matmul']):.1f}%)" for r in results)
    print(f"gpu_probe on {where}, {precision}, {record['model'].split(' ')[0]}: {rows} [MFU {basis}, "
          f"{ceiling / 1e12:.3g} TFLOP/s]; fastest: {best['batching']}; {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
