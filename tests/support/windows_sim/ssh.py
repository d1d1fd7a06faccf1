"""An SSH endpoint for the simulated host, as Windows' OpenSSH server (sshd) with PowerShell as its default shell.

What is modelled, and where it comes from:

* learn.microsoft.com "OpenSSH Server configuration for Windows Server and Windows", "Configuring the default
  shell for OpenSSH in Windows": the registry value ``HKLM\\SOFTWARE\\OpenSSH\\DefaultShell`` names the shell
  (cmd.exe when absent); here it is ``C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe``, as
  docs.ansible.com "Windows SSH" recommends, with ``ansible_shell_type: powershell`` on the Ansible side.
* PowerShell/Win32-OpenSSH wiki "DefaultShell": DefaultShellCommandOption, the switch the shell needs to run a
  command, "By default this is -c": an exec request's command line runs as ``powershell.exe -c <command>``
  (script.run_ssh_command). A shell request would start an interactive PowerShell: not simulated (exit status 1
  and a message); subsystem requests (sftp) are refused.
* The console code page of a non-interactive session is not switched to UTF-8: "ssh user@ip <cmd> is
  non-interactive ... It all depends on chcp setting" (a Win32-OpenSSH maintainer, PowerShell/Win32-OpenSSH#1768),
  and ansible-core 2.18's changelog (fragment ssh-windows.yml, ansible/ansible#83834) says commands no longer get
  the UTF-8 console code page. stdout and stderr are therefore encoded in the OEM code page of the display
  language (437 for en-US, 850 for de-DE: learn.microsoft.com "Code Page Identifiers"); UNCONFIRMED beyond that.
* Exit status, stdout and stderr (SSH extended data) are the process's; stderr keeps PowerShell's CLIXML error
  records, which Ansible's ssh connection decodes (``_replace_stderr_clixml``).

What ansible-core 2.19 sends (plugins/connection/ssh.py ``exec_command``): the command it is given, unchanged,
as the ssh client's remote command, without ``-tt`` for a PowerShell shell (sudoable is forced off); before
2.18 it prefixed ``chcp.com 65001 > $null ;`` and encoded the command a second time (removed by
ansible/ansible#83834; not modelled). Our action plugins send
``PowerShell -NoProfile -NonInteractive -ExecutionPolicy Unrestricted -EncodedCommand <base64 UTF-16LE>`` and
need no temporary directory, so nothing else reaches the host.

Public-key authentication only (the simulator's user name, case-insensitive as Windows account names are; the
keys given); a host key generated per endpoint. Every exec request is a round trip: it counts as a ``Command``
of the Simulator, on the same counter and host lock as WinRM, and honours the same ``delay``/``drop_command``
faults. A test fixture on 127.0.0.1: never point it at anything but tests.
"""

from __future__ import annotations

import asyncio
import threading

import asyncssh

from .script import run_ssh_command

OEM_CODEPAGES = {"en-US": "cp437", "de-DE": "cp850"}
LOGIN_TIMEOUT = 30  # seconds a client may take to authenticate
START_TIMEOUT = 15
STOP_TIMEOUT = 5
NOT_SIMULATED = b"windows_sim: only exec requests are simulated (no interactive shell, no subsystem such as sftp)\r\n"


class _Server(asyncssh.SSHServer):
    def __init__(self, endpoint):
        self._endpoint = endpoint
        self._conn = None

    def connection_made(self, conn):
        self._conn = conn
        self._endpoint.connections.add(conn)

    def connection_lost(self, exc):
        self._endpoint.connections.discard(self._conn)

    def begin_auth(self, username):
        if username.lower() == self._endpoint.simulator.username.lower():
            self._conn.set_authorized_keys(self._endpoint.authorized_keys)
        return True  # any other user has no keys: public-key authentication fails

    def password_auth_supported(self):
        return False


class SSHEndpoint:
    """An SSH server on ``bind:port`` in its own thread and event loop, in front of ``simulator.host``."""

    def __init__(self, simulator, bind, port, authorized_keys):
        self.simulator = simulator
        self.bind = bind
        self.port = port
        self.authorized_keys = asyncssh.import_authorized_keys(authorized_keys)
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.connections = set()
        self._loop = None
        self._thread = None
        self._acceptor = None

    @property
    def public_host_key(self):
        """The host key as a known_hosts / authorized_keys line body (``ssh-ed25519 AAAA...``)."""
        return self.host_key.export_public_key("openssh").decode("ascii").strip()

    def start(self):
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="windows_sim-ssh:%d" % self.port, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._acceptor = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.port = self._acceptor.get_port()
        return self

    async def _listen(self):
        return await asyncssh.create_server(
            lambda: _Server(self), self.bind, self.port, server_host_keys=[self.host_key], process_factory=self._run,
            encoding=None, allow_pty=False, agent_forwarding=False, x11_forwarding=False, login_timeout=LOGIN_TIMEOUT,
            reuse_address=True)

    async def _run(self, process):
        sim = self.simulator
        command = process.command
        if command is None:
            process.stderr.write(NOT_SIMULATED)
            process.exit(1)
            return
        plan = sim.faults._plan("Command", sim._count_request("Command"))
        if plan.get("delay"):
            await asyncio.sleep(plan["delay"])
        if plan.get("drop") and not plan.get("execute"):
            process.channel.get_connection().abort()
            return
        try:
            if plan.get("refuse"):
                result = plan["refuse"]
            else:
                with sim.host.lock:
                    result = run_ssh_command(sim.host, command, sim.log, sim.faults)
        except Exception as exc:  # pylint: disable=broad-except  # a simulator bug ends the command, never hangs it
            process.stderr.write(("windows_sim: internal error: %r\r\n" % exc).encode("utf-8"))
            process.exit(1)
            raise
        if plan.get("drop"):
            process.channel.get_connection().abort()
            return
        encoding = OEM_CODEPAGES.get(sim.host.language, "cp437")
        process.stdout.write(result.stdout.encode(encoding, errors="replace"))
        process.stderr.write(result.stderr.encode(encoding, errors="replace"))
        process.exit(result.exit_code)

    def stop(self):
        """Close the listener and every connection (ControlPersist masters included); bounded by timeouts."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        try:
            if self._acceptor is not None:
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=STOP_TIMEOUT * 2)
        except Exception:  # pylint: disable=broad-except  # a stuck close must not keep the test from ending
            pass
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=STOP_TIMEOUT)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = self._acceptor = None

    async def _close(self):
        self._acceptor.close()
        connections = list(self.connections)
        for conn in connections:
            conn.close()
        waits = [self._acceptor.wait_closed()] + [conn.wait_closed() for conn in connections]
        try:
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), STOP_TIMEOUT)
        finally:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STOP_TIMEOUT)
