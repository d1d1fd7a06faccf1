"""The command line and the restricted PowerShell script language of the simulator.

A WinRS command line is either ``PowerShell ... -EncodedCommand <base64>`` (what
Ansible and pywinrm's ``run_ps`` send; the script is base64 of UTF-16LE, see
learn.microsoft.com powershell 5.1 "about_PowerShell_exe" -EncodedCommand) or a
native command run by cmd.exe (pywinrm ``run_cmd``).

Scripts accept exactly the statements of docs/windows_commands.md:

1. ``Write-Output '<literal>'``
2. ``Write-Output "...$LASTEXITCODE..."`` / ``Write-Output "...$?..."``
3. ``netsh`` / ``reg`` / ``wevtutil`` with bare-word or single-quoted arguments
4. the cmdlet pipelines, verbatim (PowerShell is case-insensitive, so case
   and the spacing between tokens are free).

Anything else fails as PowerShell fails for an unknown command
(CommandNotFoundException). Quoting follows learn.microsoft.com
"about_Quoting_Rules": single-quoted strings are verbatim, ``''`` is one quote;
a bare word next to a quoted part is one argument.
"""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from .messages import text
from .tools import (
    NATIVE,
    ToolResult,
    run_get_listeners_csv,
    run_get_nettcpconnection_csv,
    run_get_process_csv,
    run_get_service_csv,
    run_planted,
)

CRLF = "\r\n"
_SPECIAL = set("$(){}@;&<>`#")
# PowerShell's tokenizer takes the typographic quotes as quotes too
# (System.Management.Automation.Language.CharExtensions IsSingleQuote/IsDoubleQuote).
SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"
DOUBLE_QUOTES = '"\u201c\u201d\u201e'
_PIPELINES = {
    "Get-NetTCPConnection | Select-Object -Property LocalAddress,LocalPort,RemoteAddress,RemotePort,State,"
    "OwningProcess | ConvertTo-Csv -NoTypeInformation": "tcp",
    "Get-Process | Select-Object -Property Id,ProcessName | ConvertTo-Csv -NoTypeInformation": "process",
    "Get-CimInstance -ClassName Win32_Service | Select-Object -Property ProcessId,Name | ConvertTo-Csv "
    "-NoTypeInformation": "service",
    "Get-NetTCPConnection -State Listen | Select-Object -Property LocalAddress,LocalPort | ConvertTo-Csv "
    "-NoTypeInformation": "listen",
}


class ParseError(Exception):
    def __init__(self, column, quote):
        super().__init__(column, quote)
        self.column = column
        self.quote = quote


@dataclass
class Word:
    parts: list = field(default_factory=list)  # [(kind, text)], kind in bare|sq|dq

    @property
    def value(self):
        return "".join(t for dummy, t in self.parts)

    @property
    def bare(self):
        return all(k == "bare" for k, dummy in self.parts)


def tokenize(line):
    """Words (with their quoted/bare parts), ``|`` and ``,`` of one line."""
    tokens = []
    cur = None
    i, n = 0, len(line)

    def flush():
        nonlocal cur
        if cur is not None:
            tokens.append(cur)
            cur = None

    while i < n:
        c = line[i]
        if c in " \t":
            flush()
            i += 1
        elif c in "|,":
            flush()
            tokens.append(c)
            i += 1
        elif c in SINGLE_QUOTES:
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise ParseError(i + 1, "'")
                if line[j] in SINGLE_QUOTES:
                    if j + 1 < n and line[j + 1] in SINGLE_QUOTES:
                        buf.append(line[j + 1])
                        j += 2
                        continue
                    j += 1
                    break
                buf.append(line[j])
                j += 1
            cur = cur or Word()
            cur.parts.append(("sq", "".join(buf)))
            i = j
        elif c in DOUBLE_QUOTES:
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise ParseError(i + 1, '"')
                if line[j] == "`" and j + 1 < n:  # escape: kept, and refused by _expand
                    buf.append(line[j:j + 2])
                    j += 2
                    continue
                if line[j] in DOUBLE_QUOTES:
                    if j + 1 < n and line[j + 1] in DOUBLE_QUOTES:
                        buf.append('""')
                        j += 2
                        continue
                    j += 1
                    break
                buf.append(line[j])
                j += 1
            cur = cur or Word()
            cur.parts.append(("dq", "".join(buf)))
            i = j
        else:
            j = i
            while j < n and line[j] not in " \t|," + SINGLE_QUOTES + DOUBLE_QUOTES:
                j += 1
            cur = cur or Word()
            cur.parts.append(("bare", line[i:j]))
            i = j
    flush()
    return tokens


def _normal(tokens):
    out = []
    for tok in tokens:
        if isinstance(tok, Word):
            if not tok.bare:
                return None
            out.append(tok.value.lower())
        else:
            out.append(tok)
    return out


_PIPELINE_TOKENS = {tuple(_normal(tokenize(k))): v for k, v in _PIPELINES.items()}


def _expand(dq, state):
    """The only expansions of the contract: $LASTEXITCODE and $?."""
    out, i = [], 0
    while i < len(dq):
        if dq.startswith("$LASTEXITCODE", i) or dq.lower().startswith("$lastexitcode", i):
            out.append("" if state["lastexit"] is None else str(state["lastexit"]))
            i += len("$LASTEXITCODE")
        elif dq.startswith("$?", i):
            out.append("True" if state["ok"] else "False")
            i += 2
        elif dq[i] in "$`":
            return None
        elif dq.startswith('""', i):
            out.append('"')
            i += 2
        else:
            out.append(dq[i])
            i += 1
    return "".join(out)


_ENV_ROOT = re.compile(r"\$env:systemroot(?![A-Za-z0-9_])", re.IGNORECASE)


def _tool_path(word, host):
    """The System32 tool a call-operator target names (``"$env:SystemRoot\\System32\\netsh.exe"`` or
    ``'C:\\Windows\\System32\\netsh.exe'``), else None.

    about_Operators "Call operator &": runs the command a string names; in a double-quoted string
    (about_Quoting_Rules) ``$env:SystemRoot`` expands to the environment variable, C:\\Windows on a default install
    (about_Environment_Variables).  File names are case-insensitive.  No other expansion is modelled.
    """
    if len(word.parts) != 1 or word.parts[0][0] not in ("sq", "dq"):
        return None
    kind, value = word.parts[0]
    if kind == "dq":
        value = _ENV_ROOT.sub(lambda m: host.system_root, value)
        if "$" in value or "`" in value:
            return None
    folder, sep, name = value.replace("/", "\\").rpartition("\\")
    if not sep or folder.lower() != (host.system_root + "\\System32").lower():
        return None
    program = name.lower().removesuffix(".exe")
    return program if program in NATIVE and name.lower().endswith(".exe") else None


def _native_argv(tokens):
    argv = []
    for tok in tokens:
        if not isinstance(tok, Word) or any(k == "dq" for k, dummy in tok.parts) or \
                any(k == "bare" and (set(t) & _SPECIAL) for k, t in tok.parts):
            return None
        argv.append(tok.value)
    return argv


def classify(tokens, host=None):
    """(kind, payload): ("write", Word) | ("native", (program, argv, how)) |
    ("pipeline", name) | ("unknown", name for the error message).  ``how``: "path" for a tool called by its full
    path, "bare" for one found through PATH."""
    if not tokens or not isinstance(tokens[0], Word):
        return "unknown", tokens[0] if tokens else ""
    first = tokens[0].value
    if host is not None and tokens[0].bare and first == "&" and len(tokens) >= 2 and isinstance(tokens[1], Word):
        program = _tool_path(tokens[1], host)
        argv = _native_argv(tokens[2:]) if program else None
        if argv is None:  # the call operator on anything else: not in the contract
            return "unknown", first
        return "native", (program, argv, "path")
    lower = first.lower()
    near_miss = lower in ("write-output", "get-nettcpconnection", "get-process", "get-ciminstance") or \
        lower.removesuffix(".exe") in NATIVE
    if lower == "write-output" and len(tokens) == 2 and isinstance(tokens[1], Word) \
            and len(tokens[1].parts) == 1 and tokens[1].parts[0][0] in ("sq", "dq"):
        return "write", tokens[1]
    program = lower.removesuffix(".exe")
    if tokens[0].bare and program in NATIVE:
        argv = _native_argv(tokens[1:])
        if argv is None:
            return "unknown", None
        return "native", (program, argv, "bare")
    normal = _normal(tokens)
    if normal is not None and tuple(normal) in _PIPELINE_TOKENS:
        return "pipeline", _PIPELINE_TOKENS[tuple(normal)]
    return "unknown", None if near_miss else first


@dataclass
class Result:
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0


def _clixml(lines):
    """Windows PowerShell started with -EncodedCommand and redirected output
    writes its error records to stderr as CLIXML (what Ansible's
    ``_parse_clixml`` and pywinrm's ``_clean_error_msg`` decode)."""
    body = "".join('<S S="Error">%s_x000D__x000A_</S>' % escape(line).replace("\r", "_x000D_").replace("\n", "_x000A_")
                   for line in lines)
    return '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">%s</Objs>' % body


_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def clixml_text(data):
    """The text of the error records in ``data`` (bytes), the reverse of _clixml(); other bytes pass as they are.

    What a WinRM client shows of stderr (Ansible's winrm connection decodes it the same way); the simulator's
    in-process connection uses it, so that no test depends on a client's internal function.
    """
    header = b"#< CLIXML\r\n"
    if not data.startswith(header):
        return data
    try:
        root = ET.fromstring(data[len(header):])
    except ET.ParseError:
        return data
    parts = [element.text or "" for element in root.iter() if element.tag.endswith("}S") and element.get("S") == "Error"]
    text = _CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), "".join(parts))
    return text.encode("utf-8")


def _not_recognized(lang, name, lineno, statement):
    at = "At line:%d char:1" if lang == "en-US" else "In Zeile:%d Zeichen:1"
    return [
        "%s : %s" % (name, text(lang, "ps_not_recognized", name=name)),
        at % lineno,
        "+ %s" % statement,
        "+ %s" % ("~" * max(1, len(name.split(" ")[0]))),
        "    + CategoryInfo          : ObjectNotFound: (%s:String) [], CommandNotFoundException" % name,
        "    + FullyQualifiedErrorId : CommandNotFoundException",
        " ",
    ]


def _native_error_records(program, stderr, lineno, statement):
    """Windows PowerShell 5.1 with its output redirected (WinRM, OpenSSH, -EncodedCommand from a service) turns
    each line a native command writes to stderr into an ErrorRecord (NativeCommandError), which reaches the
    client as error-record text: the first line as ``reg : ERROR: ...`` with its position, the others as they
    are (PowerShell/PowerShell#3996 and #13361 describe the 5.1 behaviour; the layout is as captured, e.g.
    ``reg : ERROR: The system was unable to find the specified registry key or value.`` followed by
    ``At line:1 char:1``).  $LASTEXITCODE keeps the tool's own exit code: exit codes still decide.
    The name printed for a tool called by its full path (``reg.exe``) is UNCONFIRMED; ``reg`` is used for both.
    """
    lines = [line for line in stderr.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines:
        return []
    head = lines[0]
    out = ["%s : %s" % (program, head), "At line:%d char:1" % lineno, "+ %s" % statement,
           "+ %s" % ("~" * max(1, min(len(statement), 80))),
           "    + CategoryInfo          : NotSpecified: (%s:String) [], RemoteException" % head[:20],
           "    + FullyQualifiedErrorId : NativeCommandError", " "]
    out += lines[1:]
    return out


def run_powershell(host, script, log, faults=None):
    """Run a script of the contract's language against ``host``.

    Exit code as powershell.exe -Command / -EncodedCommand sets it
    (learn.microsoft.com "about_PowerShell_exe"; PowerShell/PowerShell#13501):
    0 when the last statement succeeded ($? is True), else 1, even when the
    last statement is a native command with another exit code.
    """
    lang = host.language
    parsed = []
    for lineno, line in enumerate(script.splitlines(), 1):
        if not line.strip():
            continue
        try:
            parsed.append((lineno, line.strip(), tokenize(line)))
        except ParseError as exc:
            # A parse error stops the whole script before anything runs.
            lines = ["At line:%d char:%d" % (lineno, exc.column), "+ %s" % line.strip(),
                     text(lang, "ps_missing_terminator", quote=exc.quote),
                     "    + CategoryInfo          : ParserError: (:) [], ParentContainsErrorRecordException",
                     "    + FullyQualifiedErrorId : TerminatorExpectedAtEndOfString", " "]
            log.append(line.strip())
            return Result("", _clixml(lines), 1)
    state = {"ok": True, "lastexit": None}
    stdout, errors = [], []
    for lineno, statement, tokens in parsed:
        log.append(statement)
        kind, payload = classify(tokens, host)
        if kind == "write":
            kind_, value = payload.parts[0]
            literal = value if kind_ == "sq" else _expand(value, state)
            if literal is None:
                kind, payload = "unknown", None
            else:
                stdout.append(literal + CRLF)
                state["ok"] = True
                continue
        if kind == "native":
            program, argv, how = payload
            result = faults.tool_failure(host, program, argv) if faults is not None else None
            if result is None and how == "bare" and program in host.planted:
                result = run_planted(host, program, argv)  # found first on PATH (about_Command_Precedence)
            if result is None:
                result = NATIVE[program](host, argv)
            stdout.append(result.stdout)
            if result.stderr:
                errors += _native_error_records(program, result.stderr, lineno, statement)
            state["lastexit"] = result.exit_code
            state["ok"] = result.exit_code == 0
            continue
        if kind == "pipeline":
            if payload in ("tcp", "listen") and not host.has_nettcpip:
                errors += _not_recognized(lang, "Get-NetTCPConnection", lineno, statement)
                state["ok"] = False
                continue
            if payload == "service" and not host.has_cim:
                errors += _not_recognized(lang, "Get-CimInstance", lineno, statement)
                state["ok"] = False
                continue
            stdout.append({"tcp": run_get_nettcpconnection_csv, "listen": run_get_listeners_csv,
                           "process": run_get_process_csv, "service": run_get_service_csv}[payload](host))
            state["ok"] = True
            continue
        errors += _not_recognized(lang, payload if payload else statement, lineno, statement)
        state["ok"] = False
    err = ""
    if errors:
        err += _clixml(errors)
    return Result("".join(stdout), err, 0 if state["ok"] else 1)


def split_cmdline(line):
    """cmd.exe / CommandLineToArgvW-style split: whitespace, double quotes group."""
    args, cur, quoted, any_ = [], [], False, False
    for c in line:
        if c == '"':
            quoted = not quoted
            any_ = True
        elif c in " \t" and not quoted:
            if cur or any_:
                args.append("".join(cur))
            cur, any_ = [], False
        else:
            cur.append(c)
    if cur or any_:
        args.append("".join(cur))
    return args


_PS_VALUE_OPTIONS = ("executionpolicy", "inputformat", "outputformat", "windowstyle", "version",
                     "configurationname", "psconsolefile")
_PS_FLAGS = ("noprofile", "noninteractive", "nologo", "noexit", "mta", "sta")


def _program(word):
    """``C:\\Windows\\...\\PowerShell.exe`` -> ``powershell``."""
    return word.replace("/", "\\").split("\\")[-1].lower().removesuffix(".exe")


def execute(host, command_line, log, faults=None):
    """Run one WinRS command line (rsp:Command + rsp:Arguments)."""
    args = split_cmdline(command_line)
    if not args:
        return Result("", "", 0)
    program = _program(args[0])
    if program == "powershell":
        i = 1
        while i < len(args):
            opt = args[i].lower().lstrip("-/")
            if args[i][:1] not in "-/" or not opt:
                break
            if opt in ("e", "ec") or (len(opt) >= 2 and "encodedcommand".startswith(opt)):
                if i + 1 >= len(args):
                    break
                try:
                    script = base64.b64decode(args[i + 1], validate=True).decode("utf-16-le")
                except (binascii.Error, UnicodeDecodeError):
                    return Result("", "Cannot process the command because the value specified with -EncodedCommand "
                                      "is not properly encoded. The value must be Base64 encoded." + CRLF, 1)
                return run_powershell(host, script, log, faults)
            if opt == "c" or (len(opt) >= 3 and "command".startswith(opt)):
                return run_powershell(host, " ".join(args[i + 1:]), log, faults)
            if any(o.startswith(opt) for o in _PS_VALUE_OPTIONS) and len(opt) >= 2:
                i += 2
            elif any(o.startswith(opt) for o in _PS_FLAGS):
                i += 1
            else:
                break
        log.append(command_line)
        return Result("", "windows_sim: the simulator runs PowerShell only with -EncodedCommand or -Command" + CRLF, 1)
    log.append(command_line)
    if program in NATIVE:
        result = faults.tool_failure(host, program, args[1:]) if faults is not None else None
        if result is None:
            result = NATIVE[program](host, args[1:])
        return Result(result.stdout, result.stderr, result.exit_code)
    return Result("", text(host.language, "cmd_not_recognized", name=args[0]) + CRLF, 1)


def run_ssh_command(host, command_line, log, faults=None):
    """Run the command line of an SSH exec request as Windows' OpenSSH server does with
    ``DefaultShell = powershell.exe``: as ``powershell.exe -c <command line>``.

    DefaultShell is documented in learn.microsoft.com "OpenSSH Server configuration for Windows Server and
    Windows"; its command switch, DefaultShellCommandOption, "By default this is -c" (PowerShell/Win32-OpenSSH
    wiki "DefaultShell").  So the command line is a PowerShell script: a first word naming powershell(.exe)
    starts a child PowerShell with that command line (what Ansible's ssh connection sends, see ssh.py), any
    other line is a script of the contract's language (an Ansible ``raw``).  The outer -Command's exit code
    is 0 when its last statement, here the child process, succeeded, else 1 (about_PowerShell_exe).
    """
    args = split_cmdline(command_line)
    if args and _program(args[0]) == "powershell":
        result = execute(host, command_line, log, faults)
        return Result(result.stdout, result.stderr, 0 if result.exit_code == 0 else 1)
    return run_powershell(host, command_line, log, faults)


__all__ = ["ParseError", "Result", "ToolResult", "classify", "execute", "run_powershell", "run_ssh_command",
           "split_cmdline", "tokenize"]
