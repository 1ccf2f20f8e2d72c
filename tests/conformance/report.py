"""Results from pytest's JUnit XML, the per-file table, and the tests that pass only there."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
REASON_CHARS = 300


@dataclass(frozen=True)
class Outcome:
    status: str  # passed | failed | skipped (an error in setup counts as failed)
    reason: str = ""


def read_junit(path: Path) -> dict[str, Outcome]:
    """`file.py::test_name[params]` → outcome; empty when the run left no report."""
    if not path.is_file():
        return {}
    outcomes: dict[str, Outcome] = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        test_id = f"{module}.py::{case.get('name', '')}"
        outcomes[test_id] = _outcome(case)
    return outcomes


def _outcome(case: ElementTree.Element) -> Outcome:
    for tag, status in (("failure", FAILED), ("error", FAILED), ("skipped", SKIPPED)):
        element = case.find(tag)
        if element is not None:
            reason = one_line(element.get("message") or element.text or tag)
            said = _last_error_message(case.findtext("system-out") or "")
            if status == FAILED and said and said not in reason:
                reason += f" (last error body: {said})"
            return Outcome(status, one_line(reason))
    return Outcome(PASSED)


# utils.py prints every answer as indented JSON; an assertion like `assert 400 == 200` says
# little without the error the server gave.
_ERROR_MESSAGE = re.compile(r'^\s+"message": "(.*)",?$', re.MULTILINE)


def _last_error_message(output: str) -> str:
    found = _ERROR_MESSAGE.findall(output)
    return found[-1] if found else ""


def one_line(message: str) -> str:
    """The first meaningful line of a failure message, cut to a readable length."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def file_of(test_id: str) -> str:
    return test_id.split("::", 1)[0]


def counts(outcomes: dict[str, Outcome], file: str) -> tuple[int, int, int]:
    statuses = [o.status for test_id, o in outcomes.items() if file_of(test_id) == file]
    return statuses.count(PASSED), statuses.count(FAILED), statuses.count(SKIPPED)


def table(files: list[str], here: dict[str, Outcome], there: dict[str, Outcome] | None) -> str:
    """Passed / failed / skipped per file, llama-router beside llama-server."""
    head = f"{'file':<28} {'llama-router':>18}"
    rule = f"{'':<28} {'pass fail skip':>18}"
    if there is not None:
        head += f"   {'llama-server':>18}"
        rule += f"   {'pass fail skip':>18}"
    rows = [head, rule]
    totals = [0] * 6
    for file in files:
        mine = counts(here, file)
        theirs = counts(there, file) if there is not None else (0, 0, 0)
        for index, value in enumerate((*mine, *theirs)):
            totals[index] += value
        rows.append(_row(file, mine, theirs if there is not None else None))
    total_theirs = (totals[3], totals[4], totals[5]) if there is not None else None
    rows.append(_row("total", (totals[0], totals[1], totals[2]), total_theirs))
    return "\n".join(rows)


def _row(name: str, mine: tuple[int, int, int], theirs: tuple[int, int, int] | None) -> str:
    row = f"{name:<28} {_cells(mine):>18}"
    if theirs is not None:
        row += f"   {_cells(theirs):>18}"
    return row


def _cells(values: tuple[int, int, int]) -> str:
    return " ".join(f"{value:>4}" for value in values)


def regressions(here: dict[str, Outcome], there: dict[str, Outcome]) -> list[str]:
    """Tests that pass on llama-server and do not pass on llama-router, in file order."""
    return [
        test_id
        for test_id, outcome in there.items()
        if outcome.status == PASSED and here.get(test_id, Outcome(FAILED)).status != PASSED
    ]
