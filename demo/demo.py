"""`make demo`: real ephemeral-port exhaustion on a throwaway fleet, found by the audit, cured by the tuning.

The fleet, all on this machine and all deleted at the end (also on Ctrl-C or failure):

- "web" and "backend": two network namespaces joined by a veth pair (10.215.0.1 and 10.215.0.2, addresses
  that exist only inside those two namespaces), each with its own /proc/sys/net and /etc/sysctl.d (through
  /etc/netns/NAME); a small service listens on backend:8080;
- "win2022": a simulated Windows Server 2022 (tests/support/windows_sim) on 127.0.0.1, reached over WinRM.

One inventory holds the three; ansible-playbook runs on this machine, and reaches web and backend through an
interpreter that runs Python inside their namespace.  The steps: on web, a client that opens a new connection for
every request (each lives about 2 ms) at a steady 40 per second to backend, with stock settings (real
EADDRNOTAVAIL once the range is used up); `ansible-playbook tcpstack.tuning.audit` sampling 5 s while it runs (the report
flags web critical before the ports are gone, names that client as process@host with its destination and rate, and says pooling is the lasting cure);
`ansible-playbook tcpstack.tuning.tune --diff`; the same client again (no failure); the audit again (healthy, and
the client still named: tuning bought time, pooling is the cure).
Nothing on this machine itself changes.  Needs root and iproute2.  ``make demo`` runs it as ``python -m demo.demo``
from the repository root, with the collection on PYTHONPATH; the throwaway hosts, the traffic and the inventory
come from tests.support.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

from tests.support.collection import ROOT, collections_path
from tests.support.fleet import fleet_hosts
from tests.support.netns import SandboxError, missing_requirements, stop_process as stop
from tests.support.playbook import ansible_playbook
from tests.support.traffic import final_report, program
from tests.support.veth import ClientServer
from tests.support.windows_sim import Simulator

WEB_IP, BACKEND_IP, PORT = "10.215.0.1", "10.215.0.2", 8080
NARROW_RANGE = "40000 40999"  # 1,000 ports
CHURN_RATE, HOLD_MS = 40, 2  # the churning client: new connections per second, milliseconds each lives
FIRST_SECONDS, SECOND_SECONDS = 45, 30  # how long it runs: past the audit, and (the first time) the exhaustion
SAMPLE_SECONDS = 5
EXHAUSTED_AFTER = 1000 // CHURN_RATE  # seconds until 1,000 ports are all in TIME_WAIT
REPORTS = ROOT / ".build" / "demo"
STEPS = 8

_step = 0
_children = []


class DemoFailed(Exception):
    pass


def bold(text):
    return "\033[1m%s\033[0m" % text if sys.stdout.isatty() else text


def heading(title):
    global _step
    _step += 1
    print("\n" + bold("== Step %d/%d: %s ==" % (_step, STEPS, title)), flush=True)


def say(text=""):
    print(textwrap.indent(textwrap.dedent(text).strip("\n"), "   ") if text else "", flush=True)


class Fleet:
    """web and backend (namespaces joined by a veth pair), a simulated Windows host, one inventory."""

    def __init__(self, work):
        self.work = Path(work)
        self.link = ClientServer(WEB_IP, BACKEND_IP, prefixes=("tcpst-demo-web", "tcpst-demo-be"))
        self.web, self.backend = self.link.client, self.link.server
        self.windows = None
        self.inventory = self.work / "inventory.yml"

    def create(self):
        self.link.create()
        try:
            self.link.serve(program("serve", BACKEND_IP, PORT, 600, "--echo"))
        except SandboxError as exc:
            raise DemoFailed("the backend service did not start: %s" % exc) from exc
        self.windows = Simulator(profile="server2022").start()
        hosts = fleet_hosts({"web": self.web, "backend": self.backend}, {"win2022": self.windows}, self.work)
        self.inventory.write_text(
            "# made by demo/demo.py: two Linux hosts (network namespaces, Python runs inside them) and a\n"
            "# simulated Windows host over WinRM on 127.0.0.1\n"
            + yaml.safe_dump({"all": {"hosts": hosts}}, sort_keys=False, default_flow_style=False))

    def destroy(self):
        for child in _children:
            stop(child)
        if self.windows is not None:
            self.windows.stop()
        self.link.destroy()  # stops the backend service too
        return not any(os.path.exists("/run/netns/" + box.name) or box.etc_dir.exists()
                       for box in (self.web, self.backend))


def start_client(fleet, seconds):
    """The churning client on web, in the background: CHURN_RATE new connections per second for ``seconds``, each a
    byte there and back, held HOLD_MS, closed by the client."""
    child = fleet.web.start(program("connect", BACKEND_IP, PORT, "--rate", CHURN_RATE, "--seconds", seconds,
                                    "--exchange", "--hold-ms", HOLD_MS, "--ready"), ready="running")
    _children.append(child)
    return child


def client_counts(child, seconds):
    """The counts the client prints when it is done (it runs for ``seconds`` in all)."""
    counts = final_report(child, seconds + 30)
    if counts is None:
        raise DemoFailed("the client on web printed no counts")
    return counts


def show_client(counts):
    say("""
        The client (pid %(pid)s) made %(made)s connections in %(seconds)ss (%(rate)s per second), each living under
        10 ms (%(under_10ms)s of them); %(failed)s connect() calls failed, %(eaddrnotavail)s with EADDRNOTAVAIL
        ("Cannot assign requested address").
        """ % counts)


def ansible(fleet, playbook, *args):
    """ansible-playbook over the fleet's inventory, its own output going straight to the user."""
    cmd = [ansible_playbook(), "-i", str(fleet.inventory), playbook] + list(args)
    shown = ["ansible-playbook", "-i", str(fleet.inventory)] + [playbook] + list(args)
    say("$ " + " ".join(shlex.quote(c) for c in shown))
    print(flush=True)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path()), ANSIBLE_RETRY_FILES_ENABLED="false",
               ANSIBLE_LOCALHOST_WARNING="false")
    if sys.stdout.isatty():
        env.setdefault("ANSIBLE_FORCE_COLOR", "1")
    child = subprocess.Popen(cmd, cwd=str(fleet.work), env=env, start_new_session=True)
    _children.append(child)
    try:
        rc = child.wait(timeout=300)
    except BaseException:
        stop(child)
        raise
    finally:
        _children.remove(child)
    print(flush=True)
    return rc


def audit(fleet, name):
    target = REPORTS / name
    rc = ansible(fleet, "tcpstack.tuning.audit", "-e", "port_audit_report_dir=%s" % target,
                 "-e", "port_audit_sample_seconds=%d" % SAMPLE_SECONDS)
    if rc != 0:
        raise DemoFailed("the audit failed (rc=%d): see ansible's output above" % rc)
    report = json.loads((target / "port_audit.json").read_text())
    return report, target / "port_audit.html"


def verdicts(report):
    return ", ".join("%s %s" % (row["host"], row["verdict"]) for row in report["hosts"])


def demo(fleet):
    heading("a throwaway fleet: web -> backend, and a Windows host")
    fleet.create()
    say("""
        web (%s) and backend (%s) are network namespaces joined by a veth pair,
        %s -> %s, each with its own TCP settings and /etc/sysctl.d; a service listens on backend:%d.
        win2022 is a simulated Windows Server 2022 on 127.0.0.1:%d (WinRM). Nothing on this machine
        itself changes. The inventory (%s):
        """ % (fleet.web.name, fleet.backend.name, WEB_IP, BACKEND_IP, PORT, fleet.windows.port, fleet.inventory))
    print()
    say("\n".join("  | " + line for line in fleet.inventory.read_text().splitlines() if not line.startswith("#")))

    heading("stock settings on web, with a narrower port range")
    stock = fleet.web.sysctl("net.ipv4.ip_local_port_range")
    fleet.web.set_sysctl("net.ipv4.ip_local_port_range", NARROW_RANGE)
    say("""
        web has the kernel's defaults: ip_local_port_range %s (28,232 ports) and tcp_tw_reuse %s
        (TIME_WAIT ports are reused towards loopback only). Each closed connection keeps its port in
        TIME_WAIT for 60 s, so web can sustain at most 28,232 / 60 = 470 new connections per second to
        backend:%d; above that, connect() fails with EADDRNOTAVAIL.

        To make it visible quickly, the demo narrows web's range to 1,000 ports (%s): at most 16.7 new
        connections per second, the same arithmetic as 28,232 ports under 470 connections per second.
        """ % (" ".join(stock.split()), fleet.web.sysctl("net.ipv4.tcp_tw_reuse"), PORT, NARROW_RANGE.replace(" ", "-")))

    heading("a client that opens a new connection for every request")
    say("""
        On web, a client sends %d requests per second to backend:%d, each on a new connection that lives
        about %d ms, for %d s. That is more than the 16.7 per second 1,000 ports sustain: after %d s all of
        them are in TIME_WAIT, and connect() fails. ss -tanp would not show who does it: TIME_WAIT sockets
        have no owner, and each connection is gone in a few milliseconds.
        """ % (CHURN_RATE, PORT, HOLD_MS, FIRST_SECONDS, EXHAUSTED_AFTER))
    client = start_client(fleet, FIRST_SECONDS)

    heading("the audit, while it runs: ansible-playbook tcpstack.tuning.audit, sampling %d s" % SAMPLE_SECONDS)
    report, before_page = audit(fleet, "before")
    print()
    say("The report flags: %s." % verdicts(report))
    web = [row for row in report["hosts"] if row["host"] == "web"][0]
    if web["verdict"] != "critical" or report["hosts"][0]["host"] != "web":
        raise DemoFailed("the audit should have put web first, critical: %s" % verdicts(report))
    culprit = web.get("culprit") or {}
    if culprit.get("pid") != client.pid:
        raise DemoFailed("the audit should have named the client on web (pid %d): %s" % (client.pid, culprit))
    say("""
        The culprit: %s -> %s at %s new connections per second.
        The cure: %s.
        web's recommendations for the host, meanwhile: %s
        """ % (culprit["at"], culprit["destination"], culprit["new_connections_per_second"], web["cure"]["summary"],
               json.dumps(web["recommendations"], sort_keys=True)))
    say("Waiting for the client to finish (it runs %d s in all)..." % FIRST_SECONDS)
    first = client_counts(client, FIRST_SECONDS)
    show_client(first)
    if first["eaddrnotavail"] == 0:
        raise DemoFailed("the client should have run out of ports with stock settings: %s" % first)

    heading("the stopgap: ansible-playbook tcpstack.tuning.tune --diff")
    say("""
        The lasting cure is in the client (a connection pool, or keep-alive). Until it ships, tune the hosts.
        With the tcp_tuning role's defaults: port range 32768-65535 (32,768 ports) and tcp_tw_reuse 1
        (connect() may reuse a TIME_WAIT port after a second, with TCP timestamps), fin_timeout 30; on
        Windows the same range and TcpTimedWaitDelay 30 (read at the next boot). Persisted in each host's
        /etc/sysctl.d (really /etc/netns/NAME/sysctl.d) or registry.
        """)
    print()
    rc = ansible(fleet, "tcpstack.tuning.tune", "--diff")
    if rc != 0:
        raise DemoFailed("the tuning failed (rc=%d): see ansible's output above" % rc)
    say("web now: ip_local_port_range %s, tcp_tw_reuse %s." % (
        " ".join(fleet.web.sysctl("net.ipv4.ip_local_port_range").split()), fleet.web.sysctl("net.ipv4.tcp_tw_reuse")))

    heading("the same client again, and the audit again")
    client = start_client(fleet, SECOND_SECONDS)
    time.sleep(2)
    report, after_page = audit(fleet, "after")
    print()
    say("The report now: %s." % verdicts(report))
    if any(row["verdict"] == "critical" for row in report["hosts"]):
        raise DemoFailed("no host should be critical any more: %s" % verdicts(report))
    web = [row for row in report["hosts"] if row["host"] == "web"][0]
    culprit = web.get("culprit") or {}
    if culprit.get("pid") != client.pid:
        raise DemoFailed("the audit should still name the client on web (pid %d): %s" % (client.pid, culprit))
    second = client_counts(client, SECOND_SECONDS)
    show_client(second)
    if second["failed"]:
        raise DemoFailed("after the tuning, the client should not fail: %s" % second)
    say("""
        Healthy now, and still: %s -> %s at %s new connections per second.
        %s
        """ % (culprit["at"], culprit["destination"], culprit["new_connections_per_second"], web["cure"]["summary"]))

    heading("the reports")
    say("""
        Before the tuning: %s
        After the tuning:  %s
        (one self-contained HTML page each, JSON and Markdown beside it; open them in a browser)
        Before: %d connect() failures out of %d. After: %d out of %d.
        """ % (before_page, after_page, first["failed"], first["made"] + first["failed"],
               second["failed"], second["made"] + second["failed"]))


def _on_signal(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main():
    started = time.monotonic()
    print(bold("tcpstack.tuning demo: ephemeral-port exhaustion on a throwaway fleet, audited, tuned, audited again"))
    problems = missing_requirements()
    if problems:
        print("\nThe demo cannot run here. It needs:", file=sys.stderr)
        for problem in problems:
            print("  - " + problem, file=sys.stderr)
        print("\nIt creates network namespaces (throwaway hosts) and changes TCP settings inside them only;\n"
              "run it as root, e.g.: sudo make demo", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    code = 0
    with tempfile.TemporaryDirectory(prefix="tcpstack-demo-") as work:
        fleet = Fleet(work)
        try:
            demo(fleet)
        except DemoFailed as exc:
            print("\nDEMO FAILED: %s" % exc, file=sys.stderr)
            code = 1
        except KeyboardInterrupt:
            print("\nInterrupted.", file=sys.stderr)
            code = 130
        except Exception as exc:  # noqa: BLE001 - say what broke, then clean up
            print("\nDEMO FAILED: %s: %s" % (type(exc).__name__, exc), file=sys.stderr)
            code = 1
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
            global _step
            _step = STEPS - 1
            heading("remove the throwaway fleet")
            gone = fleet.destroy()
            say("Deleted namespaces %s, %s (and /etc/netns/...), stopped the Windows simulator." % (
                fleet.web.name, fleet.backend.name) if gone else
                "Could not delete everything: check `ip netns list` and /etc/netns/")
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if code == 0:
        print("\nDone in %.0f s: exhaustion found, its client named, the host tuned meanwhile." % (
            time.monotonic() - started))
    return code


if __name__ == "__main__":
    sys.exit(main())
