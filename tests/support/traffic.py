"""Bounded test traffic: the command line of the one churn program (tests/support/churn.py), run inside network
namespaces the caller made (Sandbox.start, ClientServer.serve, Sandbox.exec), and the report its clients print.

Shared by the integration tests, the benchmarks and the demo; the molecule scenario copies churn.py itself.  Every
loop is bounded in count and time (see churn.py for each mode and its options).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

PROGRAM = Path(__file__).resolve().with_name("churn.py")


def program(mode, *args, python=None):
    """The command that runs churn.py ``mode`` with ``args`` (each made a string) under ``python`` (default: this
    interpreter), e.g. ``program("serve", address, 8080, 300)``."""
    return [python or sys.executable, str(PROGRAM), mode] + [str(arg) for arg in args]


def final_report(child, seconds):
    """The JSON line a client prints when it is done (churn.py connect, bind-first, self-churn), read from ``child``
    (a Popen with text stdout) for at most ``seconds``; None when it printed none (it failed, or ran out of time)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if line.strip().startswith("{"):
            return json.loads(line)
        if not line and child.poll() is not None:
            break
    return None
