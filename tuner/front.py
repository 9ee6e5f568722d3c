"""The F1-vs-size Pareto front of a multi-objective search (``--objectives f1,params``), saved: each member's
model under ``results/<stage>/pareto/<name>/``, scored on the test split and timed on the CPU in the driver after
the search (trials share the CPUs; timing them there would mislead), and ``results/<stage>/pareto.csv``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import torch

from tuner.config import METRIC, SIZE_METRIC
from tuner.data import TaskData
from tuner.models import load_model, save_model
from tuner.pareto import HYPERVOLUME_REFERENCE, hypervolume, hypervolume_slices, pareto_front
from tuner.timing import cpu_name, latency
from tuner.training import evaluate, select_device, torch_forward

FRONT_DIR = "pareto"
FRONT_CSV = "pareto.csv"
# parameter_share: the member's parameters over the teacher's; hypervolume_slice: the area it adds to the front's
# hypervolume in (parameter share, validation F1) (tuner.pareto.hypervolume_slices): the column sums to it
COLUMNS = ("name", "trial_id", "parameters", "parameter_share", "num_layers", "factor_dim", "val_f1", "test_f1",
           "hypervolume_slice", "batch_1_median_ms", "batch_1_p95_ms", "batch_32_sentences_per_second", "threads",
           "cpu", "config")
# added by ``tuner.deploy --pareto``: each member's int8 model as deployed (blank where no int8 passed its gate)
INT8_COLUMNS = ("int8_val_f1", "int8_test_f1", "int8_bytes", "int8_batch_1_median_ms", "int8_quantization")


def members(kept: list) -> list[dict]:
    """The trials whose best checkpoint is non-dominated in (validation F1, parameters), smallest first."""
    points = [(entry["metrics"][METRIC], -entry["metrics"][SIZE_METRIC]) for entry in kept]
    chosen = [kept[i] for i in pareto_front(points)]
    return sorted(chosen, key=lambda entry: (entry["metrics"][SIZE_METRIC], -entry["metrics"][METRIC]))


def front_hypervolume(records: list[dict]) -> dict:
    """The front's hypervolume in (parameter share, F1), on validation F1 (what the search optimised) and on test
    F1, with its reference point; from the members' records (``save_front``)."""
    return {split: round(hypervolume([(r["parameter_share"], r[f"{split}_f1"]) for r in records]), 4)
            for split in ("val", "test")} | {"reference": HYPERVOLUME_REFERENCE}


def save_front(stage_dir: Path, kept: list, task: TaskData, tokenizer, eval_batch_size: int, precision: str,
               reference_parameters: int, echo=print) -> list[dict]:
    """Save, score and time every front member; write pareto.csv; returns one record per member.
    ``reference_parameters`` (the teacher's) is a parameter share of 1 in the hypervolume."""
    folder = Path(stage_dir) / FRONT_DIR
    staging = Path(stage_dir) / (FRONT_DIR + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    device, threads = select_device(), torch.get_num_threads()
    records = []
    for entry in members(kept):
        model = load_model(entry["checkpoint"])
        config = model.config
        name = f"{entry['metrics'][SIZE_METRIC] / 1e6:.2f}M-L{config.num_hidden_layers}-E" \
               f"{getattr(config, 'factor_dim', None) or config.hidden_size}-{entry['trial_id']}"
        test = evaluate(model.to(device), task.test, task.labels, eval_batch_size, task.pad_token_id, device,
                        precision)
        timing = latency(torch_forward(model.cpu().eval()), task.test, task.pad_token_id)
        record = {"name": name, "trial_id": entry["trial_id"], "parameters": entry["metrics"][SIZE_METRIC],
                  "parameter_share": round(entry["metrics"][SIZE_METRIC] / reference_parameters, 6),
                  "num_layers": config.num_hidden_layers, "factor_dim": getattr(config, "factor_dim", None),
                  "val_f1": entry["metrics"][METRIC], "test_f1": test["f1"], "epoch": entry["metrics"].get("epoch"),
                  **{key: timing[key] for key in COLUMNS if key in timing}, "threads": threads, "cpu": cpu_name(),
                  "config": entry["config"], "model": str(folder / name)}
        save_model(model, staging / name, tokenizer)
        echo(f"front member {name}: validation F1 {record['val_f1']:.4f}, test F1 {record['test_f1']:.4f}, "
             f"{record['batch_1_median_ms']:.2f} ms per sentence")
        records.append(record)
    slices = hypervolume_slices([(r["parameter_share"], r["val_f1"]) for r in records])
    for record, area in zip(records, slices):
        record["hypervolume_slice"] = round(area, 6)
        (staging / record["name"] / "result.json").write_text(json.dumps(record, indent=2, default=str))
    with open(staging / FRONT_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "config": json.dumps(r["config"], sort_keys=True)} for r in records)
    shutil.rmtree(folder, ignore_errors=True)
    (staging / FRONT_CSV).rename(Path(stage_dir) / FRONT_CSV)
    staging.rename(folder)
    return records


def add_int8_columns(stage_dir: Path, deployed: dict) -> None:
    """Rewrite ``pareto.csv`` with ``INT8_COLUMNS`` from each member's deploy.json record (``deployed``: member
    name -> record; a member not in it keeps blanks), so the front a user reads is the front they can serve."""
    path = Path(stage_dir) / FRONT_CSV
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = [name for name in reader.fieldnames or () if name not in INT8_COLUMNS] + list(INT8_COLUMNS)
        rows = list(reader)
    for row in rows:
        int8 = deployed.get(row["name"], {}).get("formats", {}).get("onnx_int8")
        row.update(dict.fromkeys(INT8_COLUMNS, ""))
        if int8:
            row.update(int8_val_f1=int8["validation"], int8_test_f1=int8["test"], int8_bytes=int8["bytes"],
                       int8_batch_1_median_ms=int8["latency"]["batch_1_median_ms"],
                       int8_quantization=int8["quantization"])
    staging = path.with_name(FRONT_CSV + ".partial")
    with open(staging, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    staging.rename(path)
