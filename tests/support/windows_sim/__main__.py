"""Run one simulated Windows host from the command line::

    python -m tests.support.windows_sim --profile server2022 --port 5986     # from the repository root

It serves http://127.0.0.1:PORT/wsman (Basic authentication) until SIGINT or
SIGTERM. ``--state FILE`` loads a JSON host state (see WindowsHost).
``--ssh-port N --ssh-authorized-keys FILE`` adds the SSH endpoint (ssh.py) on the
same host (0 picks a free port); its address and known_hosts line are printed on
a second line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from .host import LANGUAGES, PROFILES
from .simulator import PASSWORD, USER, Simulator


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.support.windows_sim",
                                     description="Windows host simulator (WinRM over http with Basic auth, optionally SSH; tests only)")
    parser.add_argument("--profile", default="server2022", choices=sorted(PROFILES))
    parser.add_argument("--language", default="en-US", choices=LANGUAGES)
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5985, help="0 picks a free port")
    parser.add_argument("--username", default=USER)
    parser.add_argument("--password", default=PASSWORD)
    parser.add_argument("--state", help="JSON file with the host state (see tests.support.windows_sim.host.WindowsHost)")
    parser.add_argument("--ssh-port", type=int, help="also serve SSH on this port (0 picks a free port)")
    parser.add_argument("--ssh-authorized-keys", help="authorized_keys file for the SSH endpoint (public keys only)")
    args = parser.parse_args(argv)
    if (args.ssh_port is None) != (args.ssh_authorized_keys is None):
        parser.error("--ssh-port and --ssh-authorized-keys go together")
    keys = None
    if args.ssh_authorized_keys:
        with open(args.ssh_authorized_keys, encoding="utf-8") as handle:
            keys = handle.read()
    state = None
    if args.state:
        with open(args.state, encoding="utf-8") as handle:
            state = json.load(handle)
    sim = Simulator(profile=args.profile, language=args.language, username=args.username, password=args.password,
                    host_state=state, bind=args.bind, port=args.port, ssh=keys is not None, ssh_port=args.ssh_port or 0,
                    ssh_authorized_keys=keys)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    sim.start()
    print("windows_sim: simulated %s (%s, build %d) on http://%s:%d/wsman" % (
        args.profile, args.language, sim.host.build, args.bind, sim.port), flush=True)
    if sim.ssh:
        print("windows_sim: ssh://%s@%s:%d (DefaultShell powershell.exe); known_hosts: %s" % (
            args.username, args.bind, sim.ssh_port, sim.ssh_known_hosts), flush=True)
    try:
        signal.pause() if hasattr(signal, "pause") else sim._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
