"""A WS-Management (WinRM) endpoint speaking the Windows Remote Shell protocol
as pywinrm (winrm/protocol.py) and Ansible's winrm connection use it.

Operations (learn.microsoft.com openspecs [MS-WSMV] "Web Services Management
Protocol Extensions for Windows Vista", section 3.1.4.1 "Remote Shell"):
Create (ResourceCreated + rsp:Shell with ShellId), Command (CommandResponse
with CommandId), Send (stdin, accepted and ignored), Receive (rsp:Stream
stdout/stderr base64 + rsp:CommandState .../Done with rsp:ExitCode), Signal
(SignalResponse) and Delete (DeleteResponse). Every reply's a:RelatesTo is the
request's a:MessageID. Faults are SOAP 1.2 faults with an HTTP 500 and a
wsmanfault:WSManFault Code, as pywinrm's send_message parses them.

http + Basic authentication only: this is for tests on 127.0.0.1.
"""

from __future__ import annotations

import base64
import socket
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

from .script import execute

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
ACTION_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
ACTION_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
ACTION_COMMAND = SHELL_URI + "/Command"
ACTION_RECEIVE = SHELL_URI + "/Receive"
ACTION_SEND = SHELL_URI + "/Send"
ACTION_SIGNAL = SHELL_URI + "/Signal"
SHORT_ACTIONS = {ACTION_CREATE: "Create", ACTION_DELETE: "Delete", ACTION_COMMAND: "Command",
                 ACTION_RECEIVE: "Receive", ACTION_SEND: "Send", ACTION_SIGNAL: "Signal"}

# WSManFault codes ([MS-WSMV]; the Win32 values of the WinRM errors):
# 2150858843 = 0x8033805B ERROR_WSMAN_INVALID_SELECTORS ("the shell was not found"),
# 2150858793 = 0x80338029 ERROR_WSMAN_OPERATION_TIMEDOUT (pywinrm turns it into
# WinRMOperationTimeoutError and retries Receive),
# 2150858771 = 0x80338013 ERROR_WSMAN_ACTION_NOT_SUPPORTED.
FAULT_SHELL_NOT_FOUND = 2150858843
FAULT_OPERATION_TIMEOUT = 2150858793
FAULT_ACTION_NOT_SUPPORTED = 2150858771

_ENVELOPE = (
    '<s:Envelope xml:lang="en-US" xmlns:s="%(s)s" xmlns:a="%(a)s" xmlns:x="%(x)s" xmlns:w="%(w)s" '
    'xmlns:rsp="%(rsp)s" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
    "<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{mid}</a:MessageID>"
    "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
    "<a:RelatesTo>{relates}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>" % NS
)


class WSManFault(Exception):
    def __init__(self, code, subcode, reason, message, sender=True, detail=None):
        super().__init__(message)
        self.code, self.subcode, self.reason, self.message, self.sender = code, subcode, reason, message, sender
        self.detail = detail


def _shell_not_found(shell_id):
    return WSManFault(
        FAULT_SHELL_NOT_FOUND, "w:InvalidSelectors",
        "The WS-Management service cannot process the request because the request contained invalid selectors "
        "for the resource. ",
        "The request for the Windows Remote Shell with ShellId %s failed because the shell was not found on the "
        "server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on the server. "
        "Provide the correct ShellId or create a new shell and retry the operation. " % shell_id,
        detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors")


class _Command:
    def __init__(self, result):
        self.result = result
        self.done = False


class _Shell:
    def __init__(self, codepage):
        self.codepage = codepage
        self.commands = {}


class WSManServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, simulator):
        self.simulator = simulator
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):
        # A client that gave up (read timeout, dropped connection) is no error of the simulator.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if body:
            self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _authorized(self):
        sim = self.server.simulator
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            user, dummy, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        # Windows account names are case-insensitive; passwords are not.
        return user.lower() == sim.username.lower() and password == sim.password

    def do_POST(self):  # noqa: N802
        sim = self.server.simulator
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.rstrip("/").lower() != "/wsman":
            self._send(404)
            return
        if not self._authorized():
            self._send(401, headers=[("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", 'Basic realm="WSMAN"')])
            return
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            self._send(400)
            return
        header = root.find("s:Header", NS)
        action = (header.findtext("a:Action", "", NS) or "").strip()
        message_id = (header.findtext("a:MessageID", "", NS) or "").strip()
        short = SHORT_ACTIONS.get(action, action)
        count = sim._count_request(short)
        fault_plan = sim.faults._plan(short, count)
        if fault_plan.get("delay"):
            time.sleep(fault_plan["delay"])
        try:
            if fault_plan.get("drop") and not fault_plan.get("execute"):
                self._drop()
                return
            reply = sim._dispatch(short, header, root.find("s:Body", NS), fault_plan)
            if fault_plan.get("drop"):
                self._drop()
                return
            self._send(200, _ENVELOPE.format(action=reply[0], mid=str(uuid.uuid4()).upper(), relates=escape(message_id),
                                             body=reply[1]).encode("utf-8"))
        except WSManFault as fault:
            self._send(500, self._fault_xml(fault, message_id).encode("utf-8"))

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _fault_xml(self, fault, message_id):
        body = (
            '<s:Fault><s:Code><s:Value>%s</s:Value><s:Subcode><s:Value>%s</s:Value></s:Subcode></s:Code>'
            '<s:Reason><s:Text xml:lang="en-US">%s</s:Text></s:Reason><s:Detail>%s'
            '<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="%d" Machine="%s">'
            "<f:Message>%s</f:Message></f:WSManFault></s:Detail></s:Fault>"
            % ("s:Sender" if fault.sender else "s:Receiver", fault.subcode, escape(fault.reason),
               "<w:FaultDetail>%s</w:FaultDetail>" % fault.detail if fault.detail else "", fault.code,
               escape(self.server.simulator.host.hostname), escape(fault.message)))
        return _ENVELOPE.format(action="http://schemas.dmtf.org/wbem/wsman/1/wsman/fault",
                                mid=str(uuid.uuid4()).upper(), relates=escape(message_id), body=body)


def _selector_shell_id(header):
    for sel in header.iterfind("w:SelectorSet/w:Selector", NS):
        if sel.get("Name") == "ShellId":
            return (sel.text or "").strip()
    return None


def _options(header):
    return {opt.get("Name"): (opt.text or "").strip() for opt in header.iterfind("w:OptionSet/w:Option", NS)}


def _encoding(codepage):
    # WINRS_CODEPAGE sets the console code page of the shell: 65001 is UTF-8
    # (Ansible opens its shell so); pywinrm's default is 437 (OEM US).
    try:
        return {65001: "utf-8"}.get(int(codepage), "cp%d" % int(codepage))
    except ValueError:
        return "utf-8"


class ShellService:
    """The shells and commands of one simulated host (mixed into Simulator)."""

    def _init_shells(self):
        self._shells = {}
        self._shell_lock = threading.Lock()

    def _dispatch(self, action, header, body, fault_plan):
        if action == "Create":
            return self._create(header)
        if action not in ("Command", "Receive", "Send", "Signal", "Delete"):
            raise WSManFault(FAULT_ACTION_NOT_SUPPORTED, "a:ActionNotSupported",
                             "The action is not supported by the service.",
                             "The WS-Management service cannot process the request. The action is not supported.")
        shell_id = _selector_shell_id(header)
        with self._shell_lock:
            shell = self._shells.get(shell_id)
        if shell is None:
            raise _shell_not_found(shell_id)
        if action == "Delete":
            with self._shell_lock:
                self._shells.pop(shell_id, None)
            return ACTION_DELETE + "Response", ""
        if action == "Command":
            line = body.find("rsp:CommandLine", NS)
            command = (line.findtext("rsp:Command", "", NS) or "").strip()
            arguments = [(a.text or "") for a in line.iterfind("rsp:Arguments", NS)]
            command_line = " ".join([command] + arguments)
            if fault_plan.get("refuse"):
                result = fault_plan["refuse"]
            else:
                with self.host.lock:
                    result = execute(self.host, command_line, self.log, self.faults)
            command_id = str(uuid.uuid4()).upper()
            shell.commands[command_id] = _Command(result)
            return ACTION_COMMAND + "Response", "<rsp:CommandResponse><rsp:CommandId>%s</rsp:CommandId></rsp:CommandResponse>" % command_id
        if action == "Send":
            return ACTION_SEND + "Response", "<rsp:SendResponse/>"
        if action == "Signal":
            signal = body.find("rsp:Signal", NS)
            command_id = signal.get("CommandId") if signal is not None else None
            shell.commands.pop(command_id, None)
            return ACTION_SIGNAL + "Response", "<rsp:SignalResponse/>"
        # Receive
        receive = body.find("rsp:Receive/rsp:DesiredStream", NS)
        command_id = receive.get("CommandId") if receive is not None else None
        command = shell.commands.get(command_id)
        if command is None:
            raise _shell_not_found(shell_id)
        if fault_plan.get("operation_timeout"):
            raise WSManFault(FAULT_OPERATION_TIMEOUT, "w:TimedOut",
                             "The WS-Management service cannot complete the operation within the time specified in "
                             "OperationTimeout.  ",
                             "The WS-Management service cannot complete the operation within the time specified in "
                             "OperationTimeout.  ", sender=False)
        enc = _encoding(shell.codepage)
        streams = []
        for name, data in (("stdout", command.result.stdout), ("stderr", command.result.stderr)):
            raw = data.encode(enc, errors="replace") if not command.done else b""
            for i in range(0, len(raw), 8192):  # WinRM sends output in chunks
                streams.append('<rsp:Stream Name="%s" CommandId="%s">%s</rsp:Stream>'
                               % (name, command_id, base64.b64encode(raw[i:i + 8192]).decode("ascii")))
            streams.append('<rsp:Stream Name="%s" CommandId="%s" End="true"></rsp:Stream>' % (name, command_id))
        command.done = True
        state = ('<rsp:CommandState CommandId="%s" State="%s/CommandState/Done"><rsp:ExitCode>%d</rsp:ExitCode>'
                 "</rsp:CommandState>" % (command_id, SHELL_URI, command.result.exit_code))
        return ACTION_RECEIVE + "Response", "<rsp:ReceiveResponse>%s%s</rsp:ReceiveResponse>" % ("".join(streams), state)

    def _create(self, header):
        shell_id = str(uuid.uuid4()).upper()
        codepage = _options(header).get("WINRS_CODEPAGE", "437")
        with self._shell_lock:
            self._shells[shell_id] = _Shell(codepage)
        address = "http://127.0.0.1:%d/wsman" % self.port
        body = (
            "<x:ResourceCreated><a:Address>%s</a:Address><a:ReferenceParameters>"
            "<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>"
            '<w:SelectorSet><w:Selector Name="ShellId">%s</w:Selector></w:SelectorSet></a:ReferenceParameters>'
            "</x:ResourceCreated>"
            '<rsp:Shell xmlns:rsp="%s"><rsp:ShellId>%s</rsp:ShellId><rsp:ResourceUri>'
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</rsp:ResourceUri>"
            "<rsp:Owner>%s</rsp:Owner><rsp:ClientIP>127.0.0.1</rsp:ClientIP><rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut>"
            "<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams>"
            "<rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime><rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity>"
            "</rsp:Shell>" % (address, shell_id, SHELL_URI, shell_id, escape(self.username)))
        return ACTION_CREATE + "Response", body

    @property
    def open_shells(self):
        with self._shell_lock:
            return len(self._shells)
