"""Windows round trips: WinRM commands per host for the tune playbook, against the Windows host simulator.

N simulated Windows Server 2022 hosts (tests/support/windows_sim, each a WS-Management endpoint on 127.0.0.1 with a
fresh emulated host), one ansible-playbook with forks = N runs the tune playbook over all of them: cold
(stock registry and netsh range), then converged.  ``Simulator.round_trips`` counts the Command requests
(one per exec_command) each host received; the wall time of each run is divided by N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import ExitStack

from tests.support.fleet import run_fleet
from tests.support.windows_sim import Simulator


def run(hosts=20, log=print):
    out = {"hosts": hosts, "profile": "server2022", "forks": hosts, "method": __doc__.split("\n\n")[1].replace("\n", " ")}
    with ExitStack() as stack:
        sims = {"win%02d" % i: stack.enter_context(Simulator(profile="server2022", language="en-US"))
                for i in range(hosts)}
        for label in ("cold", "converged"):
            for sim in sims.values():
                sim.reset_counters()
            started = time.monotonic()
            rc, results, output = run_fleet({}, sims, "tcpstack.tuning.tune", args=("-f", str(hosts)))
            seconds = time.monotonic() - started
            if rc != 0:
                raise RuntimeError("tune over simulated Windows hosts failed (%s, rc=%d):\n%s" % (label, rc, output[-3000:]))
            trips = [sim.round_trips for sim in sims.values()]
            changed = sum(1 for r in results if r.get("_action", "").endswith("win_tcp") and r.get("changed"))
            out[label] = {"seconds": round(seconds, 2), "seconds_per_host": round(seconds / hosts, 3),
                          "commands_per_host": sorted(set(trips)), "commands_max": max(trips),
                          "commands_median": statistics.median(trips), "hosts_changed": changed}
            log("windows: %-9s %d hosts in %.2f s (%.3f s per host), WinRM commands per host %s, changed %d" % (
                label, hosts, seconds, seconds / hosts, sorted(set(trips)), changed))
    out["commands_cold"] = out["cold"]["commands_max"]
    out["commands_converged"] = out["converged"]["commands_max"]
    out["targets"] = {"commands_cold": 2, "commands_converged": 1}
    out["targets_met"] = out["commands_cold"] <= 2 and out["commands_converged"] <= 1
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.windows", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, default=None, help="simulated Windows hosts, run in parallel (default 20)")
    parser.add_argument("count", type=int, nargs="?", default=None, help=argparse.SUPPRESS)  # the old positional form
    args = parser.parse_args(argv)
    hosts = args.hosts or args.count or 20
    if hosts < 1:
        parser.error("--hosts must be at least 1")
    print(json.dumps(run(hosts), indent=1))


if __name__ == "__main__":
    main()
