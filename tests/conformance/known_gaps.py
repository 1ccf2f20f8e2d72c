"""Tests that pass on llama-server and are known to fail on llama-router, each with its reason:
a feature that belongs to another open issue. `make conformance` fails on any other such test.
The README lists the same tests."""

from __future__ import annotations

KNOWN_GAPS: dict[str, str] = {}
