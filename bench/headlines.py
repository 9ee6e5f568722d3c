"""Pages generated from ``results/benchmarks.json`` (written only by the runs that measured each figure, through
``tuner.figures.record``): ``results/benchmarks.md`` and the results block of ``README.md``.

    python bench/headlines.py            # rewrite both from the JSON
    python bench/headlines.py --check    # exit 1 if either differs from what the JSON gives (a fast test runs it)
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuner.figures import BENCHMARKS, FRONT_MEMBER, read  # noqa: E402

PAGE = ROOT / "results" / "benchmarks.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin (python bench/headlines.py writes this block) -->", "<!-- results:end -->"


def value_text(entry: dict) -> str:
    """The value with its unit (a difference in points signed), and the F1 difference a speed ratio was measured
    at (``details.f1_points``)."""
    if entry["value"] is None:
        return "n/a"
    unit = entry["unit"]
    text = f"{entry['value']:g}{unit}" if unit in ("x", "%") or unit.startswith(" ") else f"{entry['value']:g} {unit}"
    if unit.strip() == "points":  # a difference: signed either way
        text = f"{entry['value']:+g} points"
    f1_points = (entry.get("details") or {}).get("f1_points")
    return text if f1_points is None else f"{text} at {f1_points:+.2f} F1 points"


def state(entry: dict) -> str:
    return "met" if entry.get("met") else "missed" if entry.get("met") is False else "?"


def verdict(entry: dict) -> str:
    if not entry.get("goal"):
        return ""
    return f"{entry['goal']} ({state(entry)})"


def newest_first(entries: list[dict]) -> list[dict]:
    return sorted(entries, key=lambda e: e["date"], reverse=True)


def machine_text(machine: dict) -> str:
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    return f"{machine.get('cpu', '?')}, {machine.get('cpu_threads', '?')} threads{gpu}"


SUBJECT = re.compile(r"^(?P<what>.+?) \((?P<subject>[^()]*)\)$")  # "int8 size: ... (student best, 2 threads)"


def readme_rows(entries: list[dict]) -> list[tuple[str, str, str, str]]:
    """(figure, value, goal, commit) per README row, newest first. Figures one command wrote about one subject (the
    last parenthesis of their measure) against one peer share a row: a front's members (``tuner.run --record``
    writes one figure each) as their names (L layers, E embedding rank), parameters and test F1, smallest first,
    with the search's minutes;
    any other group as each figure with its goal (and, where each recorded its search's minutes, their sum). A
    figure alone keeps a row of its own, as measured."""
    groups: dict = {}
    for index, e in enumerate(newest_first(entries)):
        member = FRONT_MEMBER.match(e["measure"])
        found = SUBJECT.match(e["measure"])
        key = (("front", member["stage"], member["where"], e["peer"]) if member else
               ("same run", found["subject"], e["command"], e["commit"], e["peer"]) if found else ("alone", index))
        groups.setdefault(key, []).append(e)
    rows = []
    for key, group in groups.items():
        first = group[0]
        if key[0] == "front":
            members = sorted(((e.get("details") or {}).get("parameters") or math.inf,
                              FRONT_MEMBER.match(e["measure"])["name"], e["value"]) for e in group)
            minutes = (first.get("details") or {}).get("search_minutes")  # the search's, as its run recorded it
            rows.append((f"{key[1]} front members ({key[2]}"
                         f"{'' if minutes is None else f', a {minutes}-minute search'}): parameters, test F1",
                         "; ".join(f"{name} {'?' if parameters == math.inf else f'{parameters / 1e6:.1f}M'} "
                                   f"{'n/a' if value is None else f'{value:.4f}'}" for parameters, name, value in members),
                         "-", first["commit"]))
        elif len(group) == 1:
            rows.append((first["measure"], value_text(first), verdict(first) or "-", first["commit"]))
        else:
            goals = [e for e in group if e.get("goal")]
            met = sum(e.get("met") is True for e in goals)
            minutes = [(e.get("details") or {}).get("search_minutes") for e in group]
            searched = "" if None in minutes else f", {sum(minutes):.0f} minutes of search"  # a pipeline's stages
            rows.append((key[1] + searched, "; ".join(f"{SUBJECT.match(e['measure'])['what']}: {value_text(e)}"
                                           + (f" (goal {e['goal']}: {state(e)})" if e.get("goal") else "")
                                           for e in group),
                         f"{met} of {len(goals)} met" if goals else "-", first["commit"]))
    return rows


def readme_block(entries: list[dict]) -> str:
    lines = [BEGIN, ""]
    if not entries:
        lines += ["No figure is recorded yet: `results/benchmarks.json` is empty.", ""]
    else:
        lines += ["| figure | value | goal | commit |", "|---|---|---|---|"]
        lines += [f"| {figure} | {value} | {goal} | {commit} |" for figure, value, goal, commit in readme_rows(entries)]
        lines += ["", "Each figure's command, date and machine: [`results/benchmarks.md`](results/benchmarks.md)."]
    return "\n".join(lines + ["", END])


def page(entries: list[dict]) -> str:
    lines = ["# Benchmarks", "",
             "Generated by `python bench/headlines.py` from `results/benchmarks.json`, which only the runs that "
             "measured the figures write (`tuner.run --record`, `tuner.deploy --record`, the bench scripts). "
             "Newest first. Earlier figures, without this provenance, are in `bench/history/`.", ""]
    if not entries:
        return "\n".join(lines + ["No figure is recorded yet.", ""])
    lines += ["| figure | value | goal | against | date |", "|---|---|---|---|---|"]
    for e in newest_first(entries):
        lines.append(f"| {e['measure']} | {value_text(e)} | {verdict(e) or '-'} | {e['peer']} | {e['date']} |")
    lines.append("")
    for e in newest_first(entries):
        lines += [f"## {e['measure']}", "", f"- value: {value_text(e)}" + (f"; goal {verdict(e)}" if e.get("goal") else ""),
                  f"- command: `{e['command']}`", f"- commit: {e['commit']}; date: {e['date']}",
                  f"- machine: {machine_text(e['machine'])}"]
        if e.get("peer_settings"):
            lines.append(f"- against: {e['peer']} ({e['peer_settings']})")
        if e.get("seeds"):
            lines.append(f"- seeds: {e['seeds']}")
        if e.get("inputs"):
            lines.append(f"- read: {', '.join(e['inputs'])}")
        if e.get("details"):
            lines.append("- details: " + ", ".join(f"{k} {v}" for k, v in e["details"].items()))
        lines.append("")
    return "\n".join(lines)


def with_block(readme: str, block: str) -> str:
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: no results block ({BEGIN} ... {END})")
    return readme[:start] + block + readme[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 where a page differs from the JSON")
    args = parser.parse_args(argv)
    entries = read(BENCHMARKS)
    wanted = {PAGE: page(entries), README: with_block(README.read_text(), readme_block(entries))}
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)}: differs from results/benchmarks.json (python bench/headlines.py)",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
