"""``Simulator``: one simulated Windows host behind its own WinRM endpoint."""

from __future__ import annotations

import threading

from .host import WindowsHost
from .messages import text
from .tools import ToolResult
from .wsman import ShellService, WSManServer

# the login every simulator accepts unless given another (test credentials: the simulator is a test fixture)
USER, PASSWORD = "ansible", "Sim-Passw0rd!"


class Faults:
    """Fault injection for reliability tests. Request numbers are 1-based and
    counted per action for the simulator's lifetime (``Command`` numbers are
    ``Simulator.round_trips``).

    - ``drop_command(n, execute=False)``: close the TCP connection instead of
      replying to the n-th Command; with ``execute=True`` the command runs on the
      host first (the reply is lost, the change is made).
    - ``delay(seconds, action="Command", n=None)``: sleep before replying to the
      n-th request of ``action`` (every one when n is None), e.g. to exceed the
      client's read timeout.
    - ``operation_timeout(times=1)``: the next ``times`` Receive requests answer
      with the WS-Management OperationTimeout fault (pywinrm retries Receive).
    - ``refuse_command(n, stderr="Access is denied.", exit_code=1)``: answer the
      n-th Command without running anything: nothing on stdout, ``stderr``,
      ``exit_code`` (as when the account may not start PowerShell).
    - ``fail_tool(tool, times=1, verb=None, output=None, exit_code=1)``: the next
      ``times`` runs of ``tool`` (netsh|reg|wevtutil), only those whose arguments
      contain ``verb`` if given (a word, or a tuple of words that must all be
      there), change nothing and print ``output`` (default: the tool's
      "parameter is incorrect"/"not found" text) with ``exit_code``.
      ``fail_netsh(times=1, verb="set")`` is the short form.
    - ``reset()`` removes all of them.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        with self._lock:
            self._drops = {}
            self._refusals = {}
            self._delays = []
            self._timeouts = 0
            self._tool_failures = []

    def drop_command(self, n, execute=False):
        with self._lock:
            self._drops[int(n)] = bool(execute)

    def refuse_command(self, n, stderr="Access is denied.", exit_code=1):
        with self._lock:
            self._refusals[int(n)] = ToolResult("", stderr + "\r\n", int(exit_code))

    def delay(self, seconds, action="Command", n=None):
        with self._lock:
            self._delays.append((action, n, float(seconds)))

    def operation_timeout(self, times=1):
        with self._lock:
            self._timeouts += int(times)

    def fail_tool(self, tool, times=1, verb=None, output=None, exit_code=1):
        with self._lock:
            self._tool_failures.append({"tool": tool.lower(), "times": int(times), "verb": verb, "output": output,
                                        "exit_code": int(exit_code)})

    def fail_netsh(self, times=1, verb="set", output=None, exit_code=1):
        self.fail_tool("netsh", times=times, verb=verb, output=output, exit_code=exit_code)

    # -- used by the server -------------------------------------------------
    def _plan(self, action, count):
        plan = {}
        with self._lock:
            for act, n, seconds in self._delays:
                if act == action and (n is None or n == count):
                    plan["delay"] = plan.get("delay", 0) + seconds
            if action == "Command" and count in self._refusals:
                plan["refuse"] = self._refusals.pop(count)
            if action == "Command" and count in self._drops:
                plan["drop"] = True
                plan["execute"] = self._drops.pop(count)
            if action == "Receive" and self._timeouts > 0:
                self._timeouts -= 1
                plan["operation_timeout"] = True
        return plan

    def tool_failure(self, host, tool, argv):
        with self._lock:
            for failure in self._tool_failures:
                if failure["tool"] != tool or failure["times"] <= 0:
                    continue
                words = (failure["verb"],) if isinstance(failure["verb"], str) else failure["verb"] or ()
                if not {w.lower() for w in words} <= {a.lower() for a in argv}:
                    continue
                failure["times"] -= 1
                output = failure["output"]
                if output is None:
                    key = "reg_not_found" if tool == "reg" else "param_incorrect"
                    output = text(host.language, key)
                if tool == "netsh":
                    return ToolResult(output + "\r\n\r\n", "", failure["exit_code"])
                return ToolResult("", output + "\r\n", failure["exit_code"])
        return None


class Simulator(ShellService):
    """A simulated Windows host with a WinRM endpoint on 127.0.0.1 (http, Basic) and, with ``ssh=True``, an
    SSH endpoint too (ssh.py: Windows' OpenSSH server with PowerShell as the default shell, public-key
    authentication with ``ssh_authorized_keys``, the text of an authorized_keys file). Both endpoints run
    commands on the same emulated host and count them on the same ``round_trips``.

    >>> with Simulator(profile="server2022") as sim:
    ...     url = "http://127.0.0.1:%d/wsman" % sim.port
    """

    def __init__(self, profile="server2022", language="en-US", username=USER, password=PASSWORD,
                 host_state=None, bind="127.0.0.1", port=0, clock=None, ssh=False, ssh_port=0, ssh_authorized_keys=None):
        if ssh and not ssh_authorized_keys:
            raise ValueError("ssh=True needs ssh_authorized_keys (public-key authentication only)")
        self.host = WindowsHost(profile=profile, language=language, host_state=host_state, clock=clock)
        self.username = username
        self.password = password
        self.bind = bind
        self.port = port
        self.faults = Faults()
        self.log = []
        self.requests = {}
        self._count_lock = threading.Lock()
        self._server = None
        self._thread = None
        self.ssh = ssh
        self.ssh_port = ssh_port
        self._ssh_authorized_keys = ssh_authorized_keys
        self._ssh = None
        self._init_shells()

    @property
    def round_trips(self):
        """Commands received (one per exec_command): WinRS Command requests and SSH exec requests."""
        return self.requests.get("Command", 0)

    @property
    def ssh_known_hosts(self):
        """The known_hosts line of the SSH endpoint (``[127.0.0.1]:PORT ssh-ed25519 AAAA...``), once started."""
        if self._ssh is None:
            return None
        name = "127.0.0.1" if self.ssh_port == 22 else "[127.0.0.1]:%d" % self.ssh_port  # ssh's known_hosts format
        return "%s %s" % (name, self._ssh.public_host_key)

    def _start_ssh(self):
        if self.ssh and self._ssh is None:
            from .ssh import SSHEndpoint  # pylint: disable=import-outside-toplevel  # asyncssh only when asked for

            self._ssh = SSHEndpoint(self, self.bind, self.ssh_port, self._ssh_authorized_keys).start()
            self.ssh_port = self._ssh.port

    def _stop_ssh(self):
        if self._ssh is not None:
            self._ssh.stop()
            self._ssh = None

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d/wsman" % self.port

    def _count_request(self, action):
        with self._count_lock:
            self.requests[action] = self.requests.get(action, 0) + 1
            return self.requests[action]

    def reset_counters(self):
        """Forget the request counts and the statement log (not the host state)."""
        with self._count_lock:
            self.requests = {}
            del self.log[:]

    def start(self):
        if self._server is not None:
            return self
        self._server = WSManServer((self.bind, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="windows_sim:%d" % self.port, daemon=True)
        self._thread.start()
        try:
            self._start_ssh()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        self._stop_ssh()
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def serve_forever(self):
        """Serve in the calling thread (the command line uses this)."""
        self._server = WSManServer((self.bind, self.port), self)
        self.port = self._server.server_address[1]
        try:
            self._start_ssh()
            self._server.serve_forever()
        finally:
            self._stop_ssh()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
