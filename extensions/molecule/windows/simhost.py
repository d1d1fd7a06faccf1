"""Start, reboot and stop simulated Windows hosts for extensions/molecule/windows.

The simulator (tests/support/windows_sim) has no way to be told from outside
to reboot, so each host runs in a process of this launcher, which serves one
``tests.support.windows_sim.Simulator`` and reboots its emulated host
(``WindowsHost.reboot()``: registry values read at boot take effect, the
active netsh store reloads from the persistent one) on SIGHUP.  The state of
each host is kept in DIR/NAME.json: pid, port, profile, boots and the
registry values in effect since the last boot, and the system (WinNAT) exclusions
of IPv4 TCP now and at the first boot: with WINNAT_BLOCKS > 0 the host's WinNAT
reserves that many blocks of 100 ports at each boot, elsewhere after a reboot.  That process imports the
simulator from the repository root, which it gets on its PYTHONPATH.

    python simhost.py start DIR NAME PROFILE [WINNAT_BLOCKS]    # prints the JSON once the host listens
    python simhost.py reboot DIR NAME           # returns once the host has rebooted
    python simhost.py stop DIR NAME
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[3]  # the repository: tests.support is importable from here
TIMEOUT = 30.0


def state_file(folder, name):
    return pathlib.Path(folder) / ("%s.json" % name)


def read_state(folder, name):
    try:
        return json.loads(state_file(folder, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_state(folder, name, sim, profile, first=None):
    system = [[a, b] for a, b, administered in sim.host.excluded_ranges("ipv4", "tcp") if not administered]
    data = {"name": name, "pid": os.getpid(), "port": sim.port, "profile": profile, "boots": sim.host.boots,
            "effective": sim.host.effective, "system_excluded": system,
            "first_system_excluded": system if first is None else first}
    tmp = state_file(folder, name).with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, state_file(folder, name))


def serve(folder, name, profile, winnat_blocks="0"):
    from tests.support.windows_sim import Simulator  # pylint: disable=import-outside-toplevel  # start() set PYTHONPATH

    sim = Simulator(profile=profile, port=0, host_state={"winnat_blocks": int(winnat_blocks)})
    first = [[a, b] for a, b, administered in sim.host.excluded_ranges("ipv4", "tcp") if not administered]

    def reboot(signum, frame):
        sim.host.reboot()
        write_state(folder, name, sim, profile, first)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGHUP, reboot)
    signal.signal(signal.SIGTERM, stop)
    sim.start()
    write_state(folder, name, sim, profile)
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        state_file(folder, name).unlink(missing_ok=True)
    return 0


def wait_for(predicate, what):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise SystemExit("simhost: timed out waiting for %s" % what)


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def start(folder, name, profile, winnat_blocks="0"):
    pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
    old = read_state(folder, name)
    if old and alive(old["pid"]):
        print(json.dumps(old))
        return 0
    state_file(folder, name).unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with open(pathlib.Path(folder) / ("%s.log" % name), "ab") as log:
        child = subprocess.Popen([sys.executable, __file__, "serve", folder, name, profile, winnat_blocks],
                                 stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def ready():
        if child.poll() is not None:
            raise SystemExit("simhost: %s exited (%s), see %s.log" % (name, child.returncode, name))
        return read_state(folder, name)

    print(json.dumps(wait_for(ready, "%s to listen" % name)))
    return 0


def reboot(folder, name):
    before = read_state(folder, name)
    if not before:
        raise SystemExit("simhost: %s is not running" % name)
    os.kill(before["pid"], signal.SIGHUP)
    print(json.dumps(wait_for(lambda: (read_state(folder, name) or {}).get("boots", -1) > before["boots"]
                              and read_state(folder, name), "%s to reboot" % name)))
    return 0


def stop(folder, name):
    state = read_state(folder, name)
    if state and alive(state["pid"]):
        os.kill(state["pid"], signal.SIGTERM)
        # the file goes when the host has stopped (the process may linger as a zombie of a non-reaping init)
        wait_for(lambda: not state_file(folder, name).exists() or not alive(state["pid"]), "%s to stop" % name)
    state_file(folder, name).unlink(missing_ok=True)
    return 0


def main(argv):
    commands = {"serve": (serve, (3, 4)), "start": (start, (3, 4)), "reboot": (reboot, (2,)), "stop": (stop, (2,))}
    if not argv or argv[0] not in commands or len(argv) - 1 not in commands[argv[0]][1]:
        raise SystemExit(__doc__)
    return commands[argv[0]][0](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
