"""``InProcessConnection``: the simulated host behind an Ansible connection's ``exec_command``, in-process.

What the Windows plugins see of a connection is one method, ``exec_command(cmd, in_data, sudoable)`` (one round
trip, as over WinRM or SSH). This stand-in runs the command line on an emulated host (``host.WindowsHost``) with
``script.execute``, the same code the WS-Management and SSH endpoints run, without a server, so unit tests and the
bench drive ``windows_tuning.run`` and the action plugins directly::

    from tests.support.windows_sim.connection import InProcessConnection

    conn = InProcessConnection(profile="server2022")
    conn.host.set_registry("TcpTimedWaitDelay", "REG_DWORD", 120)
    conn.faults.fail_tool("netsh", verb="set")
    ...                    # an action plugin or windows_tuning.run() with WindowsHost(conn)
    conn.round_trips       # exec_command calls; conn.log: the statements run; conn.commands: the command lines,
                           # conn.scripts: their scripts decoded

It returns what Ansible's winrm connection returns: the exit code, stdout as UTF-8 bytes (the code page Ansible
opens its shell with) and stderr with PowerShell's CLIXML error records decoded. ``faults`` are the simulator's
(``simulator.Faults``): ``fail_tool`` as on the endpoints; ``drop_command(n, execute)`` raises
``ConnectionResetError`` (an OSError, as requests' ConnectionError is when the HTTP connection drops) instead of
answering the n-th command, after running it with ``execute=True``; ``refuse_command(n)`` answers without running it;
``delay`` sleeps.

``simulated_host(...)`` builds an emulated host from a few settings, ``run_script(host, script)`` runs one script
on it and returns its stdout.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from types import SimpleNamespace

from .host import PROFILES, WindowsHost
from .script import clixml_text, execute, run_powershell
from .simulator import Faults

_ENCODED = re.compile(r"-EncodedCommand\s+(\S+)\s*\Z", re.IGNORECASE)


class InProcessConnection:
    """An Ansible connection stand-in whose commands run on an emulated Windows host in this process."""

    def __init__(self, host=None, faults=None, profile="server2022", language="en-US", host_state=None):
        self.host = host if host is not None else WindowsHost(profile=profile, language=language, host_state=host_state)
        self.faults = faults if faults is not None else Faults()
        self.round_trips = 0
        self.log = []  # the statements run, in order (as Simulator.log)
        self.commands = []  # each command line received
        self.scripts = []  # each command's script, decoded (None for a command line that is not -EncodedCommand)
        self._shell = SimpleNamespace(tmpdir=None)  # what ActionBase.run looks at

    def exec_command(self, cmd, in_data=None, sudoable=True):  # pylint: disable=unused-argument
        self.round_trips += 1
        self.commands.append(cmd)
        self.scripts.append(_decode(cmd))
        plan = self.faults._plan("Command", self.round_trips)  # pylint: disable=protected-access
        if plan.get("delay"):
            time.sleep(plan["delay"])
        if plan.get("refuse"):
            return plan["refuse"].exit_code, plan["refuse"].stdout.encode("utf-8"), plan["refuse"].stderr.encode("utf-8")
        if plan.get("drop") and not plan.get("execute"):
            raise ConnectionResetError("windows_sim: the connection was dropped before command %d ran" % self.round_trips)
        with self.host.lock:
            result = execute(self.host, cmd, self.log, self.faults)
        if plan.get("drop"):
            raise ConnectionResetError("windows_sim: the connection was dropped after command %d ran" % self.round_trips)
        stderr = clixml_text(result.stderr.encode("utf-8"))  # decoded, as Ansible's winrm connection hands it over
        return result.exit_code, result.stdout.encode("utf-8"), stderr


def _name(item):
    """"ipv4" for "ipv4" or for an enum member whose value is "ipv4"."""
    return getattr(item, "value", item)


def simulated_host(build=20348, language="en-US", registry=None, ranges=None, excluded=None, connections=None,
                   processes=None, events=None):
    """An emulated host with the given state, on the profile of Windows ``build`` (20348: Server 2022).

    ``registry`` {name: (type, data)} under Tcpip\\Parameters; ``ranges`` {(ip, proto): (start, number)} (set as
    an installer would, without netsh's checks); ``excluded`` {(ip, proto): ((start, end, administered), ...)};
    ``connections`` [(local address, local port, remote address, remote port, state, pid)] replace the default
    listeners; ``processes`` [(pid, name)] are added; ``events`` [event id] are logged now.  ``ip`` and ``proto``
    are names ("ipv4", "tcp") or enum members with those values.
    """
    profile = next(name for name, info in PROFILES.items() if info["build"] == build)
    host = WindowsHost(profile=profile, language=language)
    for name, (rtype, data) in (registry or {}).items():
        host.set_registry(name, rtype, data)
    for (ip, proto), (start, number) in (ranges or {}).items():
        host.set_dynamic_range(start, number, ip=_name(ip), proto=_name(proto))
    for (ip, proto), rows in (excluded or {}).items():
        for start, end, administered in rows:
            host.add_excluded(start, end, ip=_name(ip), proto=_name(proto), administered=administered)
    if connections is not None:
        host.clear_connections()
        for row in connections:
            host.add_connection(*row)
    for pid, name in processes or ():
        host.add_process(pid, name)
    for event_id in events or ():
        host.add_event(event_id)
    return host


def run_script(host, script, faults=None):
    """What ``script`` prints on ``host`` (stdout, CRLF line ends), run in-process (with ``faults``, a Faults)."""
    return run_powershell(host, script, [], faults).stdout


def _decode(cmd):
    match = _ENCODED.search(cmd)
    if match is None:
        return None
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-16-le")
    except (binascii.Error, UnicodeDecodeError):
        return None


__all__ = ["InProcessConnection", "run_script", "simulated_host"]
