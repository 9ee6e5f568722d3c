"""Export the best result of every stage from the results folder: ``best_configs.yaml`` and ``summary.md``.

Run at the end of every search, and on its own: ``python -m tuner.export [--results-dir results]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from tuner import registry
from tuner.cli import results_command
from tuner.errors import TunerError

EXPORTED_KEYS = ("hyperparameters", "val_f1", "test_f1", "parameters", "num_layers", "factor_dim", "checkpoint",
                 "search_space", "search_space_sha256", "seed", "search_seed", "data", "split", "profile", "training", "trials",
                 "search_wall_seconds", "versions")
FRONT_KEYS = ("objectives", "pareto", "hypervolume")  # a multi-objective search's, exported where present


def read_json(path: Path) -> dict:
    """A results JSON file; one that does not parse is a TunerError naming the file and line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TunerError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise TunerError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise TunerError(f"{path}: cannot read ({exc.strerror})") from None


def read_results(results_dir: Path, skip: tuple = ()) -> dict:
    """stage name -> the record ``results/<stage>/best/result.json`` holds, for every stage that has one (but
    ``skip``), in pipeline order (stages the registry does not know last, by name)."""
    order = {name: position for position, name in enumerate(registry.names())}
    paths = sorted((p for p in Path(results_dir).glob("*/best/result.json") if p.parent.parent.name not in skip),
                   key=lambda p: (order.get(p.parent.parent.name, len(order)), p.parent.parent.name))
    return {path.parent.parent.name: checked_record(path, read_json(path)) for path in paths}


def check_exports(results_dir: Path, searched: tuple = (), deployed: tuple = ()) -> None:
    """Refuse, before a command writes anything, the records and deployed models its exports will read: every
    stage's record but those of ``searched`` (stages it searches again), every ``deploy.json`` but theirs and
    those of ``deployed`` (stages it deploys again)."""
    kept = read_results(results_dir, skip=searched)
    read_deployed(results_dir, [stage for stage in kept if stage not in deployed])


RECORD_NUMBERS = ("parameters", "val_f1", "test_f1", "search_wall_seconds")  # what the summary and report print
MEMBER_NUMBERS = ("parameters", "val_f1", "test_f1", "batch_1_median_ms")


def checked_record(path: Path, record) -> dict:
    """A stage's result record, refused (naming the file and key) unless it holds what the exports read, so that
    a damaged file stops an export before anything is written."""
    if not isinstance(record, dict):
        raise TunerError(f"{path}: expected a JSON object (a stage's result record), got {type(record).__name__}")
    if not isinstance(record.get("hyperparameters"), dict):
        raise TunerError(f"{path}: hyperparameters: expected a mapping, got {record.get('hyperparameters')!r}")
    members = record.get("pareto") or []
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        raise TunerError(f"{path}: pareto: expected a list of members")
    for i, member in enumerate(members):
        for key in ("threads", "cpu"):  # the report's front section names them
            if key not in member:
                raise TunerError(f"{path}: pareto[{i}].{key} is missing")
    for where, found, keys in [("", record, RECORD_NUMBERS),
                               *((f"pareto[{i}].", m, MEMBER_NUMBERS) for i, m in enumerate(members))]:
        for key in keys:
            value = found.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TunerError(f"{path}: {where}{key}: expected a number, got {value!r}")
    volume = record.get("hypervolume")
    if volume is not None and not (isinstance(volume, dict) and isinstance(volume.get("reference"), str) and all(
            isinstance(volume.get(k), (int, float)) and not isinstance(volume.get(k), bool) for k in ("val", "test"))):
        raise TunerError(f"{path}: hypervolume: expected val and test numbers and a reference, got {volume!r}")
    return record


FORMAT_NUMBERS = ("validation", "test", "bytes")  # what the summary prints of each deployed format
LATENCY_NUMBERS = ("batch_1_median_ms", "batch_1_p95_ms", "batch_32_sentences_per_second")


def checked_deployed(path: Path, report) -> dict:
    """A stage's ``deploy.json``, refused (naming the file and key) unless it holds what the summary reads."""
    if not isinstance(report, dict):
        raise TunerError(f"{path}: expected a JSON object (a deployed model's record), got {type(report).__name__}")
    for key in ("threads", "cpu"):
        if key not in report:
            raise TunerError(f"{path}: {key} is missing")
    formats = report.get("formats")
    if not isinstance(formats, dict) or not all(isinstance(found, dict) for found in formats.values()):
        raise TunerError(f"{path}: formats: expected a mapping of format names to their scores")
    for name, found in formats.items():
        timing = found.get("latency")
        if not isinstance(timing, dict):
            raise TunerError(f"{path}: formats.{name}.latency: expected a mapping, got {timing!r}")
        for where, record, keys in [(f"formats.{name}.", found, FORMAT_NUMBERS),
                                    (f"formats.{name}.latency.", timing, LATENCY_NUMBERS)]:
            for key in keys:
                value = record.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TunerError(f"{path}: {where}{key}: expected a number, got {value!r}")
    return report


def description(stage: str, record: dict) -> str:
    """What the stage's model is: recorded with the result, else (an older result) from the registry."""
    if "description" in record:
        return record["description"]
    known = {s.name: s for s in registry.stages()}
    return known[stage].description.format(**record) if stage in known else ""


def summary_table(records: dict, deployed: dict | None = None) -> str:
    lines = ["# Results", "", "F1 is entity-level (seqeval) on the held-out test split, never used for selection.",
             "", "| Model | Parameters | Description | Validation F1 | Test F1 | Search wall time |",
             "|---|---|---|---|---|---|"]
    for stage, record in records.items():
        lines.append(f"| {stage} | {record['parameters'] / 1e6:.2f}M | {description(stage, record)} | "
                     f"{record['val_f1']:.4f} | {record['test_f1']:.4f} | {record['search_wall_seconds'] / 60:.1f} min |")
    for stage, record in records.items():
        lines += front_table(stage, record.get("pareto") or [], record.get("hypervolume"))
    if deployed:
        lines += ["", "## Deployed (python -m tuner.deploy)", "",
                  "F1 of each format on the search's sentences (PyTorch in float32, without the search's bf16 "
                  "autocast); latency on the CPU, one sentence at a time and in batches of 32 (length-sorted).", "",
                  "| Model | Format | Size on disk | Validation F1 | Test F1 | Batch 1, median ms | Batch 1, p95 ms "
                  "| Batch 32, sentences/s | Threads, CPU |", "|---|---|---|---|---|---|---|---|---|"]
        for stage, report in deployed.items():
            for name, found in report["formats"].items():
                timing = found["latency"]
                lines.append(f"| {stage} | {name} | {found['bytes'] / 1e6:.1f} MB | {found['validation']:.4f} | "
                             f"{found['test']:.4f} | {timing['batch_1_median_ms']:.2f} | {timing['batch_1_p95_ms']:.2f} | "
                             f"{timing['batch_32_sentences_per_second']:.0f} | {report['threads']}, {report['cpu']} |")
    return "\n".join(lines) + "\n"


def front_table(stage: str, members: list, volume: dict | None = None) -> list[str]:
    """A front search's members (``--objectives f1,params``), smallest first, and its hypervolume, as summary.md
    lines; none: []."""
    if not members:
        return []
    lines = ["", f"## {stage}: the F1-vs-size front ({len(members)} members; {stage}/pareto.csv, models in "
             f"{stage}/pareto/)", "", *hypervolume_lines(volume),
             f"Latency in float32 PyTorch on {members[0]['threads']} threads, {members[0]['cpu']}.", "",
             "| Member | Parameters | Validation F1 | Test F1 | Batch 1, median ms |", "|---|---|---|---|---|"]
    for member in sorted(members, key=lambda m: m["parameters"]):
        lines.append(f"| {member.get('name', '')} | {member['parameters'] / 1e6:.2f}M | {member['val_f1']:.4f} | "
                     f"{member['test_f1']:.4f} | {member['batch_1_median_ms']:.2f} |")
    return lines


def hypervolume_lines(volume: dict | None) -> list[str]:
    """The front's hypervolume as a paragraph (summary.md, report.md); none for a record written before it."""
    if not volume:
        return []
    return [f"Hypervolume in (parameter share of the teacher, F1): **{volume['val']:.4f}** on validation F1, "
            f"{volume['test']:.4f} on test F1; reference point {volume['reference']}.", ""]


def read_deployed(results_dir: Path, stages) -> dict:
    """stage name -> its ``<stage>/deploy/deploy.json``, for the stages deployed."""
    paths = {stage: Path(results_dir) / stage / "deploy" / "deploy.json" for stage in stages}
    return {stage: checked_deployed(path, read_json(path)) for stage, path in paths.items() if path.is_file()}


def write_exports(results_dir: Path, skip: tuple = ()) -> dict:
    """``best_configs.yaml`` and ``summary.md`` from every stage's record but ``skip``'s (stages a run has yet to
    search again, whose old records it has not checked)."""
    records = read_results(results_dir, skip)
    if not records:
        raise TunerError(f"{results_dir}: no stage results (results/<stage>/best/result.json) to export")
    exported = {stage: {**{key: record.get(key) for key in EXPORTED_KEYS},
                        **{key: record[key] for key in FRONT_KEYS if key in record}}
                for stage, record in records.items()}
    summary = summary_table(records, read_deployed(results_dir, records))  # everything read before writing
    (Path(results_dir) / "best_configs.yaml").write_text(yaml.safe_dump(exported, sort_keys=False))
    (Path(results_dir) / "summary.md").write_text(summary)
    return exported


main = results_command("python -m tuner.export", __doc__, lambda folder: (
    f"wrote {folder / 'best_configs.yaml'} ({', '.join(write_exports(folder))}) and {folder / 'summary.md'}"))


if __name__ == "__main__":
    sys.exit(main())
