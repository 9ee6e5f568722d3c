"""``results/benchmarks.json``: every headline ratio of the benchmarks, with its goal, its peer, its command and its
date, so figures can be compared run to run. Each benchmark updates the entries it measured (by ``measure`` and
``peer``); the others stay as their last run left them.

    python bench/headlines.py            # print the entries as a table
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADLINES = ROOT / "results" / "benchmarks.json"
FIELDS = ("measure", "value", "unit", "goal", "met", "peer", "peer_settings", "command", "date")


def entry(measure: str, value: float | None, unit: str, goal: str, met: bool | None, peer: str, peer_settings: str,
          command: str, date: str | None = None, **details) -> dict:
    """One headline: ``peer`` is ``default`` (the peer at its library's defaults), ``tuned`` (as an expert would
    set it up) or what else it is held against (``random search, no early stopping``); ``value`` in ``unit``."""
    record = {"measure": measure, "value": value, "unit": unit, "goal": goal, "met": met, "peer": peer,
              "peer_settings": peer_settings, "command": command,
              "date": date or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")}
    if details:
        record["details"] = details
    return record


def update(entries: list[dict], path: Path = HEADLINES) -> list[dict]:
    """Replace the entries with the same ``measure`` and ``peer`` where they stand, keep the rest, add new ones at
    the end; returns the file's entries."""
    current = json.loads(path.read_text())["headlines"] if path.is_file() else []
    new = {(e["measure"], e["peer"]): e for e in entries}
    merged = [new.pop((e["measure"], e["peer"]), e) for e in current] + list(new.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"headlines": merged}, indent=2) + "\n")
    return merged


def main() -> int:
    entries = json.loads(HEADLINES.read_text())["headlines"] if HEADLINES.is_file() else []
    for e in entries:
        value = "n/a" if e["value"] is None else f"{e['value']:g}{e['unit']}"
        print(f"{e['date'][:10]}  {e['measure']}: {value} (goal {e['goal']}; against {e['peer']}) "
              f"{'met' if e['met'] else 'missed' if e['met'] is False else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
