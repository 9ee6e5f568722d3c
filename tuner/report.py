"""Write ``results/report.md`` with PNG plots: per stage the optimization history, the hyperparameter
importances and the parallel coordinates of the trials; across stages F1 against parameter count.

    python -m tuner.report [--results-dir results]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from tuner.cli import results_command  # noqa: E402
from tuner.errors import TunerError  # noqa: E402
from tuner.export import hypervolume_lines, read_deployed, read_results, summary_table  # noqa: E402


def plot_history(trials: list, stage: str, path: Path) -> None:
    numbers = [t["number"] for t in trials]
    values = [t["value"] for t in trials]
    best = [max(values[: i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for pruned, marker, label in ((False, "o", "trial F1"), (True, "x", "stopped early: F1 at its last epoch")):
        chosen = [t for t in trials if t.get("pruned", False) == pruned]
        if chosen:
            ax.plot([t["number"] for t in chosen], [t["value"] for t in chosen], marker, linestyle="", label=label)
    ax.step(numbers, best, where="post", label="best so far")
    ax.set(xlabel="trial", ylabel="validation F1", title=f"{stage}: optimization history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_importances(importances: dict, stage: str, path: Path) -> None:
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance (fANOVA)", title=f"{stage}: hyperparameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def numeric(value, name: str, trials: list) -> float:
    """A parameter's value on an axis: numbers as they are, a categorical (a front search's shape) by its rank
    among the values the trials took."""
    if isinstance(value, (int, float)):
        return float(value)
    return float(sorted({str(t["params"].get(name)) for t in trials}).index(str(value)))


def plot_parallel(trials: list, stage: str, path: Path) -> None:
    """One line per trial across its hyperparameters (each scaled to [0, 1]) and its F1, coloured by F1."""
    names = sorted({name for t in trials for name in t["params"]})
    columns = names + ["val_f1"]
    rows = [[numeric(t["params"].get(n, float("nan")), n, trials) for n in names] + [t["value"]] for t in trials]
    lows = [min(r[i] for r in rows) for i in range(len(columns))]
    highs = [max(r[i] for r in rows) for i in range(len(columns))]
    scaled = [[(v - lo) / (hi - lo) if hi > lo else 0.5 for v, lo, hi in zip(r, lows, highs)] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    colours = plt.cm.viridis([s[-1] for s in scaled])
    for row, colour in zip(scaled, colours):
        ax.plot(range(len(columns)), row, color=colour, alpha=0.8)
    ax.set_xticks(range(len(columns)), columns, rotation=15)
    ax.set(ylabel="scaled value", title=f"{stage}: parallel coordinates (colour: F1)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tradeoff(records: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage, record in records.items():
        ax.scatter(record["parameters"] / 1e6, record["test_f1"], s=60)
        ax.annotate(stage, (record["parameters"] / 1e6, record["test_f1"]), textcoords="offset points", xytext=(5, 5))
    ax.set(xlabel="parameters (millions)", ylabel="test F1", title="compression trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_front(records: dict, stage: str, path: Path) -> None:
    """A front search's members (test F1 against parameters, each labelled with its batch-1 latency), joined as
    a staircase, with the other stages' best models marked."""
    members = records[stage]["pareto"]
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = [m["parameters"] / 1e6 for m in members]
    ax.step(sizes, [m["test_f1"] for m in members], where="post", color="tab:blue", alpha=0.4)
    ax.scatter(sizes, [m["test_f1"] for m in members], s=40, color="tab:blue", label=f"{stage} front")
    for member in members:
        ax.annotate(f"{member['batch_1_median_ms']:.1f} ms", (member["parameters"] / 1e6, member["test_f1"]),
                    textcoords="offset points", xytext=(4, -12), fontsize=7)
    for other, record in records.items():
        if other != stage:
            ax.scatter(record["parameters"] / 1e6, record["test_f1"], s=80, marker="*", label=other)
    ax.set(xlabel="parameters (millions)", ylabel="test F1",
           title=f"{stage}: F1 against size (labels: batch-1 CPU latency, float32)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results_dir: Path) -> Path:
    from tuner.search import study_trials

    records = read_results(results_dir)
    if not records:
        raise TunerError(f"{results_dir}: no stage results to report on (run python -m tuner.run first)")
    # everything read (and so checked) before the first plot is written
    lines = [summary_table(records, read_deployed(results_dir, records)), "![F1 against parameters](plots/tradeoff.png)", ""]
    studies = {stage: study_trials(Path(results_dir), stage) for stage in records}
    plots = Path(results_dir) / "plots"
    plots.mkdir(exist_ok=True)
    plot_tradeoff(records, plots / "tradeoff.png")
    for stage, record in records.items():
        if record.get("pareto"):
            plot_front(records, stage, plots / "front.png")
            # its members are in the summary's front table above
            lines += [f"## {stage}: the front, test F1 against parameters", "",
                      *hypervolume_lines(record.get("hypervolume")), "![the front](plots/front.png)", ""]
    for stage, record in records.items():
        trials, importances = studies[stage]
        stopped = sum(t.get("pruned", False) for t in trials)
        lines += [f"## {stage}", "", f"Best validation F1 {record['val_f1']:.4f}, test F1 {record['test_f1']:.4f}, "
                  f"{len(trials)} trials in the Optuna study, {stopped} of them stopped early (value: a finished "
                  "trial's best epoch, a stopped one's last).", ""]
        lines += [f"**The search space may be too narrow:** {edge}." for edge in record.get("range_edges", [])]
        lines += [""] if record.get("range_edges") else []
        if trials:
            plot_history(trials, stage, plots / f"{stage}_history.png")
            plot_parallel(trials, stage, plots / f"{stage}_parallel.png")
            lines += [f"![history](plots/{stage}_history.png)", f"![parallel coordinates](plots/{stage}_parallel.png)"]
        if importances:
            plot_importances(importances, stage, plots / f"{stage}_importances.png")
            lines.append(f"![importances](plots/{stage}_importances.png)")
        elif len({t["value"] for t in trials}) <= 1:
            lines.append("No importances: every trial scored the same.")
        lines.append("")
    report = Path(results_dir) / "report.md"
    report.write_text("\n".join(lines))
    return report


def said(results_dir: Path) -> str:
    report = write_report(results_dir)
    return f"wrote {report} and its plots under {report.parent / 'plots'}"


main = results_command("python -m tuner.report", __doc__, said)


if __name__ == "__main__":
    sys.exit(main())
