"""How well rc-mta reads replies: the corpus in tests/corpus, measured as the live path reads it.

Why: the decision is what rc-mta exists for, and it must never be the opposite of what the
person meant; the comment is what the task keeps. Machine mail (bounces, out-of-office
replies) must never act, and a person must never be taken for a machine.

What: every case of tests/corpus/human is read through ``rc_mta.pipeline.read_message``
and ``interpret_action`` (the default word lists), every case of tests/corpus/machine (when
that corpus exists) for its machine-mail verdict. Printed:

- right actions: the words decide what the case expects (complete, fail, or nothing);
- opposite actions: complete read as fail or fail as complete (must be 0);
- exact comments: the comment is exactly the person's words;
- human replies taken for machines (must be 0), and machine mail recognised.

    python bench/replies.py [--verbose] [--json]

``--verbose`` lists each miss; with ``--json`` the last line is one JSON object. Exit status
1 when a goal is missed: an opposite action or a person taken for a machine ever, under
98 % right actions, under 90 % exact comments, under 99 % of machine mail recognised.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from corpus_reader import human_cases, human_controls, machine_cases, read  # type: ignore[import-not-found]

GOALS = {"right_actions": 0.98, "exact_comments": 0.90, "machine_recognised": 0.99}


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def measure(verbose: bool) -> dict[str, Any]:
    cases = human_cases()
    right = opposite = exact = taken = 0
    for case in cases:
        reading = read(case.path)
        right += reading.action == case.action
        opposite += {reading.action, case.action} == {"complete", "fail"}
        exact += reading.comment == case.comment
        taken += reading.machine is not None
        if verbose and (reading.action != case.action or reading.comment != case.comment or reading.machine):
            print(
                f"  miss {case.file} ({case.client}, {case.language}): action {reading.action}, expected {case.action}"
            )
            if reading.comment != case.comment:
                print(f"       comment {reading.comment!r}\n       expected {case.comment!r}")
            if reading.machine:
                print(f"       taken for machine mail: {reading.machine}")
    controls = human_controls()
    control_taken = 0
    for path in controls:
        reason = read(path).machine
        control_taken += reason is not None
        if verbose and reason is not None:
            print(f"  miss {path.name}: a person's reply taken for machine mail ({reason})")
    machines = machine_cases()
    recognised = 0
    for machine in machines:
        reason = read(machine.path).machine
        recognised += reason is not None
        if verbose and reason is None:
            print(f"  miss {machine.file} ({machine.kind}): not recognised as machine mail")
    return {
        "human_cases": len(cases),
        "languages": len(Counter(case.language for case in cases)),
        "clients": len({case.client.split(" (")[0] for case in cases}),
        "right_actions": _share(right, len(cases)),
        "opposite_actions": opposite,
        "exact_comments": _share(exact, len(cases)),
        "humans_taken_for_machines": taken + control_taken,
        "human_controls": len(controls),
        "machine_cases": len(machines),
        "machine_recognised": _share(recognised, len(machines)),
    }


def report(result: dict[str, Any]) -> list[str]:
    n = result["human_cases"]
    lines = [
        f"Human replies: {n} cases, {result['languages']} languages, {result['clients']} clients",
        f"  right actions               {_percent(result['right_actions']):>8}   (goal >= 98 %)",
        f"  opposite actions            {result['opposite_actions']:>8}   (goal 0)",
        f"  exact comments              {_percent(result['exact_comments']):>8}   (goal >= 90 %)",
        f"  taken for machine mail      {result['humans_taken_for_machines']:>8}   (goal 0; "
        f"{n} replies + {result['human_controls']} controls)",
        f"Machine mail: {result['machine_cases'] or 'n/a (no tests/corpus/machine)'}"
        + (" cases" if result["machine_cases"] else ""),
        f"  recognised                  {_percent(result['machine_recognised']):>8}   (goal >= 99 %)",
    ]
    return lines


def goals_met(result: dict[str, Any]) -> bool:
    if result["opposite_actions"] or result["humans_taken_for_machines"]:
        return False
    return all(result[name] is None or result[name] >= goal for name, goal in GOALS.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="list every miss")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    args = parser.parse_args()
    result = measure(args.verbose)
    print("\n".join(report(result)))
    result["goals_met"] = goals_met(result)
    if args.json:
        print(json.dumps(result))
    return 0 if result["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
