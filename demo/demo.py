"""`make demo`: tune the TCP stack of a throwaway host with tcpstack.tuning.linux_tcp, and look at the result.

The "host" is a network namespace with its own /etc/sysctl.d (through
/etc/netns/NAME), so nothing on this machine changes: ansible-playbook runs
inside the namespace, where /proc/sys/net and /etc/sysctl.d are the
namespace's own.  The namespace is deleted at the end, also on Ctrl-C or
failure.  Needs root and iproute2.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

DEMO = Path(__file__).resolve().parent
ROOT = DEMO.parent
sys.path.insert(0, str(ROOT / "tests" / "lib"))

import netns  # noqa: E402  (tests/lib/netns.py)

PLAYBOOK = DEMO / "tune.yml"
INVENTORY = DEMO / "inventory.yml"
PERSIST_FILE = "60-tcpstack-tuning.conf"
SERVICE_PORT = 40000  # a pretend service listening inside the ephemeral range

# key, what it is (for the table)
SHOWN = (
    ("net.ipv4.ip_local_port_range", "ports for outgoing connections"),
    ("net.ipv4.ip_local_reserved_ports", "ports kept out of that range"),
    ("net.ipv4.tcp_tw_reuse", "reuse TIME_WAIT ports (1 = for all)"),
    ("net.ipv4.tcp_tw_reuse_delay", "ms before a TIME_WAIT port is reused"),
    ("net.ipv4.tcp_timestamps", "needed by tcp_tw_reuse"),
    ("net.ipv4.tcp_fin_timeout", "s an orphan stays in FIN_WAIT_2"),
    ("net.core.somaxconn", "max accept backlog"),
)

STEPS = 6
_step = 0


def heading(title):
    global _step
    _step += 1
    print("\n\033[1m" if sys.stdout.isatty() else "\n", end="")
    print("== Step %d/%d: %s ==" % (_step, STEPS, title), end="")
    print("\033[0m" if sys.stdout.isatty() else "")
    sys.stdout.flush()


def say(text=""):
    print(textwrap.indent(textwrap.dedent(text).strip("\n"), "   ") if text else "", flush=True)


def values(box):
    raw = box.sysctls([key for key, _what in SHOWN])
    return {key: None if value is None else " ".join(value.split()) for key, value in raw.items()}


def _shown(value):
    return '""' if value == "" else value


def table(now, before=None):
    """key, value, what it is; with ``before``: key, before, now, changed, what it is."""
    if before is None:
        rows = [("key", "value", "what it is")]
        rows += [(key, _shown(now[key]), what) for key, what in SHOWN if now.get(key) is not None]
    else:
        rows = [("key", "before", "now", "", "what it is")]
        rows += [(key, _shown(before[key]), _shown(now[key]), "*" if before[key] != now[key] else "", what)
                 for key, what in SHOWN if now.get(key) is not None]
    # keys the kernel lacks are left out (tcp_tw_reuse_delay needs Linux 6.14)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        say("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if number == 0:
            say("  ".join("-" * w for w in widths))
    if before is not None:
        say("* = changed")


def command_line(box, *extra):
    cmd = ["ip", "netns", "exec", box.name, "ansible-playbook", "-i", os.path.relpath(INVENTORY),
           os.path.relpath(PLAYBOOK)] + list(extra)
    return "$ " + " ".join(cmd)


def run_ansible(box):
    """ansible-playbook with --diff inside the sandbox, its output going straight to the user."""
    say(command_line(box, "--diff"))
    print(flush=True)
    rc, results = box.run_playbook(PLAYBOOK, inventory=INVENTORY, diff=True, stream=True)
    print(flush=True)
    if rc != 0 or not results or any(r.get("failed") for r in results):
        raise DemoFailed("ansible-playbook failed (rc=%d): %s" % (rc, "; ".join(
            str(r.get("msg")) for r in results if r.get("failed")) or "see its output above"))
    return results


class DemoFailed(Exception):
    pass


def demo(box):
    heading("create a throwaway host")
    box.create()
    say("""
        A network namespace, %s, stands in for a server: it has its own TCP
        settings (/proc/sys/net) and its own /etc/sysctl.d, which really is
        %s.  Nothing on this machine is changed.
        """ % (box.name, box.sysctl_d))
    with box.listener(SERVICE_PORT, seconds=600):
        say("A pretend service listens on TCP port %d there, inside the ephemeral port range." % SERVICE_PORT)
        tune(box)


def tune(box):
    heading("its TCP settings now (the kernel's defaults)")
    before = values(box)
    table(before)

    heading("apply the recommended tuning with ansible-playbook --diff")
    say("The playbook, %s:" % os.path.relpath(PLAYBOOK))
    print(flush=True)
    say("\n".join("  " + line for line in PLAYBOOK.read_text().splitlines() if not line.startswith("#")))
    print(flush=True)
    first = run_ansible(box)
    changed = sum(1 for r in first if r.get("changed"))
    for result in first:
        for warning in result.get("warnings") or []:
            say("module warning: " + warning)

    heading("what changed")
    now = values(box)
    table(now, before)
    print()
    say("""
        The port range now has %d ports instead of %d, port %d is reserved so
        that no outgoing connection takes it while the service restarts, and
        connect() may reuse ports in TIME_WAIT.
        """ % (_size(now["net.ipv4.ip_local_port_range"]), _size(before["net.ipv4.ip_local_port_range"]),
               SERVICE_PORT))
    text = box.read_file(PERSIST_FILE)
    print()
    say("""
        So that it survives a reboot, the module wrote /etc/sysctl.d/%s
        (mode %04o, really %s):
        """ % (PERSIST_FILE, box.path(PERSIST_FILE).stat().st_mode & 0o777, box.path(PERSIST_FILE)))
    print(flush=True)
    say("\n".join("  | " + line for line in (text or "(missing!)").splitlines()))
    if changed != 1 or text is None:
        raise DemoFailed("the first run should have changed the host and written %s" % PERSIST_FILE)

    heading("run it again: nothing left to do")
    again = run_ansible(box)
    changed = sum(1 for r in again if r.get("changed"))
    if changed:
        raise DemoFailed("the second run changed something (changed=%d): the module is not idempotent" % changed)
    say("changed=0: the host already has these values (compared by meaning, so the kernel's")
    say('"32768<TAB>65535" equals the playbook\'s [32768, 65535]) and the file is not rewritten.')


def _size(port_range):
    low, high = (int(p) for p in port_range.split())
    return high - low + 1


def _on_signal(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main():
    print("tcpstack.tuning demo: tune the TCP stack of a throwaway host against ephemeral-port exhaustion")
    problems = netns.missing_requirements()
    if problems:
        print("\nThe demo cannot run here. It needs:", file=sys.stderr)
        for problem in problems:
            print("  - " + problem, file=sys.stderr)
        print("\nIt creates a network namespace (a throwaway host) and changes TCP settings inside it only;\n"
              "run it as root, e.g.: sudo make demo", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    box = netns.Sandbox.new(prefix="tcpst-demo")
    code = 0
    try:
        demo(box)
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
        heading("remove the throwaway host")
        box.destroy()
        gone = not os.path.exists("/run/netns/" + box.name) and not box.etc_dir.exists()
        say("Deleted namespace %s and %s." % (box.name, box.etc_dir) if gone
            else "Could not delete everything: check `ip netns list` and %s" % box.etc_dir)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if code == 0:
        print("\nDone: the tuning applied, persisted, and a second run changed nothing.")
    return code


if __name__ == "__main__":
    sys.exit(main())
