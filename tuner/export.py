"""Export the best result of every stage from the results folder: ``best_configs.yaml`` and ``summary.md``.

Run at the end of every search, and on its own: ``python -m tuner.export [--results-dir results]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from tuner.config import STAGES
from tuner.errors import TunerError

DESCRIPTIONS = {
    "teacher": "pretrained encoder fine-tuned for NER",
    "factorized": "teacher with SVD-factorized word embeddings (E={factor_dim}), fine-tuned",
    "student": "{num_layers}-layer student (E={factor_dim}) distilled from the teacher",
}
EXPORTED_KEYS = ("hyperparameters", "val_f1", "test_f1", "parameters", "num_layers", "factor_dim", "checkpoint",
                 "search_space", "search_space_sha256", "seed", "data", "split", "profile", "training", "trials",
                 "search_wall_seconds", "versions")


def read_results(results_dir: Path) -> dict:
    """stage -> the record ``results/<stage>/best/result.json`` holds, for the stages that have one."""
    records = {}
    for stage in STAGES:
        path = Path(results_dir) / stage / "best" / "result.json"
        if path.is_file():
            try:
                records[stage] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise TunerError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    return records


def summary_table(records: dict) -> str:
    lines = ["# Results", "", "F1 is entity-level (seqeval) on the held-out test split, never used for selection.",
             "", "| Model | Parameters | Description | Validation F1 | Test F1 | Search wall time |",
             "|---|---|---|---|---|---|"]
    for stage, record in records.items():
        description = DESCRIPTIONS[stage].format(**record)
        lines.append(f"| {stage} | {record['parameters'] / 1e6:.2f}M | {description} | {record['val_f1']:.4f} | "
                     f"{record['test_f1']:.4f} | {record['search_wall_seconds'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def write_exports(results_dir: Path) -> dict:
    records = read_results(results_dir)
    if not records:
        raise TunerError(f"{results_dir}: no stage results (results/<stage>/best/result.json) to export")
    exported = {stage: {key: record.get(key) for key in EXPORTED_KEYS} for stage, record in records.items()}
    (Path(results_dir) / "best_configs.yaml").write_text(yaml.safe_dump(exported, sort_keys=False))
    (Path(results_dir) / "summary.md").write_text(summary_table(records))
    return exported


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuner.export", description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    try:
        exported = write_exports(args.results_dir)
    except TunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.results_dir / 'best_configs.yaml'} ({', '.join(exported)}) and {args.results_dir / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
