"""A whole ansible-playbook run SIGKILLed at random points while it tunes, then run again.

A power cut or an OOM kill does not ask: the controller, its workers and the module on the host die together.
Each round tunes a fresh network namespace (the old state: kernel defaults, no file), or undoes the tuning (the
old state: tuned), and kills the whole run, one process group, at a random moment of a full run's length. Then:

- every managed key holds its old or its new value, never a third one, and our sysctl.d file is absent, or whole
  with the old or the new text (never partial, never a leftover temporary file);
- the next run, not killed, converges, and the one after it changes nothing.

A kill can land after the first runtime key is written and before the file is renamed into place (the module
applies the runtime values, then persists them): some keys, or the keys but not the file, are then new and the rest
old. Several sysctl writes and a file cannot be made atomic together against SIGKILL. The test counts such rounds
(``mixed``) and asserts the per-key rule for them; the next run converges from them like from any other.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.support.netns import Sandbox

pytestmark = pytest.mark.usefixtures("root_netns")

ROUNDS = int(os.environ.get("TCPSTACK_PLAYBOOK_KILLS", "50"))
OUR_FILE = "60-tcpstack-tuning.conf"
OPTIONS = {"fin_timeout": 31, "port_range": [20000, 60999], "tw_reuse": 1, "somaxconn": 8192,
           "max_syn_backlog": 4096, "reserved_ports": "40010-40021"}
KEYS = ("net.ipv4.tcp_fin_timeout", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse", "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_reserved_ports")


def play(state):
    options = "".join("\n        %s: %s" % (k, v if not isinstance(v, list) else "[%s, %s]" % tuple(v))
                      for k, v in OPTIONS.items())
    return """
- name: Tune, or undo
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Tune the TCP stack
      tcpstack.tuning.linux_tcp:
        state: %s%s
""" % (state, options if state == "present" else "")


def observe(box):
    """The managed keys and every file of the sandbox's sysctl.d, by content."""
    files = {path.name: path.read_text() for path in sorted(box.sysctl_d.iterdir())}
    return {key: box.sysctl(key) for key in KEYS}, files


def test_killed_runs_leave_old_or_new_and_the_next_run_converges(figures):
    rng = random.Random(20261201)
    outcomes = {"old": 0, "new": 0, "mixed": 0}
    with Sandbox.new(prefix="kil") as box:
        untuned = observe(box)
        started = time.monotonic()
        rc, _results = box.run_playbook(play("present"))
        full_run = time.monotonic() - started
        assert rc == 0, box.last_run.describe()
        tuned = observe(box)
        assert tuned != untuned and tuned[1].get(OUR_FILE)
        rc, _results = box.run_playbook(play("absent"))
        assert rc == 0 and observe(box) == untuned, box.last_run.describe()

        for number in range(ROUNDS):
            state, before, after = ("present", untuned, tuned) if number % 2 == 0 else ("absent", tuned, untuned)
            box.run_playbook(play(state), kill_after=rng.uniform(0.0, full_run))
            keys, files = observe(box)
            for key in KEYS:
                assert keys[key] in (before[0][key], after[0][key]), (number, key, keys[key])
            assert set(files) <= {OUR_FILE}, files  # no temporary file left behind
            assert files.get(OUR_FILE) in (before[1].get(OUR_FILE), after[1].get(OUR_FILE)), files
            if (keys, files) == before:
                outcomes["old"] += 1
            elif (keys, files) == after:
                outcomes["new"] += 1
            else:
                outcomes["mixed"] += 1
            rc, results = box.run_playbook(play(state))
            assert rc == 0 and observe(box) == after, (number, box.last_run.describe())
            rc, results = box.run_playbook(play(state))
            assert rc == 0 and not any(r.get("changed") for r in results), (number, box.last_run.describe())
    figures.add("playbook_kills", faults_injected=ROUNDS, ended_old=outcomes["old"], ended_new=outcomes["new"],
                mixed_keys=outcomes["mixed"], survived=ROUNDS, data_lost=0)
    figures.note("playbook_kills", full_run_seconds=round(full_run, 2))
    assert sum(outcomes.values()) == ROUNDS
