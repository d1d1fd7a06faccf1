"""WinRM faults injected by the Windows host simulator (tests/support/windows_sim), real ansible-playbook and
pywinrm: the connection dropping between reading and applying (before and after the apply ran), a failing
netsh, a read timeout before the read and during the apply, WS-Management OperationTimeout faults.  Each
faulty run fails with a clear error (or, for faults pywinrm retries, succeeds), the host is either unchanged
or fully changed, and the next run converges.  No root needed.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.fleet import run_fleet
from tests.support.windows_sim import Simulator

WIN = "tcpstack.tuning.win_tcp"
OPTIONS = {"port_range": "10000 65535", "time_wait_delay": 30, "max_user_port": 65534}
# tight timeouts only for the runs whose fault is a delay; the other runs keep Ansible's defaults, so that a
# loaded machine cannot turn a slow answer into a spurious failure
TIMEOUTS = {"ansible_winrm_operation_timeout_sec": 3, "ansible_winrm_read_timeout_sec": 5}
DELAY = 10


def normalised(state):
    """A host snapshot() with each registry key's values as a dict (Windows does not promise an order)."""
    out = dict(state)
    out["registry"] = {k: {"values": sorted(map(tuple, v["values"])), "subkeys": sorted(v["subkeys"])}
                       for k, v in state["registry"].items()}
    return out


def play(sim, *tasks, timeouts=None):
    text = json.dumps([{"name": "win faults", "hosts": "all", "gather_facts": False, "vars": timeouts or {},
                        "tasks": list(tasks)}], indent=1)
    _rc, results, output = run_fleet({}, {"win": sim}, text)
    by_name = {r["_task"]: r for r in results}
    missing = [t["name"] for t in tasks if t["name"] not in by_name]
    assert not missing, output
    return by_name


def task(name, **extra):
    return dict({"name": name, WIN: OPTIONS, "ignore_errors": True, "ignore_unreachable": True}, **extra)


def at_desired(sim):
    host = sim.host
    return (host.registry_value("TcpTimedWaitDelay") == 30 and host.registry_value("MaxUserPort") == 65534
            and all(tuple(host.dynamic_range(ip, "tcp")) == (10000, 55536) for ip in ("ipv4", "ipv6")))


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


SCENARIOS = [
    # id, arm(sim), host after the faulty run ("unchanged" | "desired"), fragments of the error (any of)
    ("drop-before-apply", lambda sim: sim.faults.drop_command(2, execute=False), "unchanged", None),
    ("drop-after-apply", lambda sim: sim.faults.drop_command(2, execute=True), "desired", None),
    ("netsh-fails", lambda sim: sim.faults.fail_netsh(times=1, verb="set"), "unchanged",
     ("netsh int ipv4 set dynamicportrange", "The parameter is incorrect", "undone")),
    ("timeout-on-read", lambda sim: sim.faults.delay(DELAY, action="Command", n=1), "unchanged", None),
    ("timeout-on-apply", lambda sim: sim.faults.delay(DELAY, action="Command", n=2), "either", None),
    ("operation-timeout-retried", lambda sim: sim.faults.operation_timeout(times=2), "ok", None),
]


@pytest.mark.parametrize("sid, arm, outcome, fragments", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_winrm_fault_then_next_run_converges(figures, sid, arm, outcome, fragments):  # pylint: disable=unused-argument
    with Simulator(profile="server2022", language="en-US") as sim:
        sim.host.set_registry("TcpTimedWaitDelay", "REG_DWORD", 120)
        before = normalised(sim.host.snapshot())
        arm(sim)
        first = play(sim, task("faulty run"), timeouts=TIMEOUTS if sid.startswith("timeout") else None)["faulty run"]
        figures.add("windows_faults", faults_injected=1)
        if outcome == "ok":
            assert first["_status"] == "ok" and first["changed"] is True, first
            assert at_desired(sim)
        else:
            assert first["_status"] in ("failed", "unreachable"), first
            msg = first.get("msg", "")
            assert msg.strip(), first
            if fragments:
                for fragment in fragments:
                    assert fragment in msg, msg
            if outcome == "unchanged":
                assert normalised(sim.host.snapshot()) == before, "the host was left half changed"
            elif outcome == "desired":
                assert at_desired(sim), "the apply ran but the host is not at the desired state"
            else:  # the client gave up while the apply waited: once the delay is over the host is either
                time.sleep(DELAY)  # untouched (the simulator drops a command whose shell was closed) or tuned
                state = normalised(sim.host.snapshot())
                assert state == before or at_desired(sim), "the host was left half changed"
                figures.note("windows_fault_outcomes", **{sid: "unchanged" if state == before else "applied late"})
            figures.add("windows_faults", failed_clearly=1)
            figures.note("windows_fault_messages", **{sid: msg[:300]})
        sim.faults.reset()
        out = play(sim, task("next run"), task("idempotent"))
        assert out["next run"]["_status"] == "ok", out["next run"]
        assert at_desired(sim)
        assert out["idempotent"]["_status"] == "ok" and out["idempotent"]["changed"] is False, out["idempotent"]
        figures.add("windows_faults", converged=1)
        print("%s: %s" % (sid, first.get("msg", "ok")))


def test_connection_lost_during_apply_says_what_happened():
    with Simulator(profile="server2022", language="en-US") as sim:
        sim.faults.drop_command(2, execute=True)
        first = play(sim, task("faulty run"))["faulty run"]
        msg = first.get("msg", "")
        assert "appl" in msg.lower() and "again" in msg.lower(), msg
