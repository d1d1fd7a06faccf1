"""Reliability suites (issue 8): bad input and faults on the real kernel, files and the Windows simulator.

``root_netns`` comes from tests/conftest.py (skip locally, fail under CI=true).  ``figures`` collects the counts
each test reports (inputs tried, faults injected, runs survived, data lost); at the end of the session they are
written as JSON to $TCPSTACK_RELIABILITY_FIGURES (tools/reliability_report.py sets it), or to
.build/reliability-figures.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.collection import ROOT

FIGURES_ENV = "TCPSTACK_RELIABILITY_FIGURES"


class Figures:
    """Per-suite counters: figures.add("suite", inputs=3, faults=1, ...)."""

    def __init__(self):
        self.suites = {}

    def add(self, suite, **counts):
        entry = self.suites.setdefault(suite, {})
        for name, value in counts.items():
            entry[name] = entry.get(name, 0) + value

    def note(self, suite, **values):
        self.suites.setdefault(suite, {}).update(values)


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures():
    return _FIGURES


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
    if not _FIGURES.suites:
        return
    path = Path(os.environ.get(FIGURES_ENV) or ROOT / ".build" / "reliability-figures.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = {}
    if path.exists() and os.environ.get(FIGURES_ENV):
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = {}
    previous.update(_FIGURES.suites)
    path.write_text(json.dumps(previous, indent=1, sort_keys=True) + "\n")
