"""The Windows tools the simulator emulates: netsh, reg, wevtutil and the two
cmdlet pipelines of docs/windows_commands.md.

Each tool is ``run_<tool>(host, argv) -> ToolResult`` where ``argv`` excludes
the program name. Output uses CRLF line ends, as Windows console tools write.
Each rule cites the Microsoft documentation it follows.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from xml.sax.saxutils import escape

from .host import IP_VERSIONS, PROTOCOLS, UTC
from .messages import text

CRLF = "\r\n"


@dataclass
class ToolResult:
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0


def _lines(*lines):
    return "".join(line + CRLF for line in lines)


def _prefix_match(word, choices, minimum=1):
    """netsh accepts any unambiguous prefix of a context, command or tag
    (learn.microsoft.com windows-commands "netsh": "commands ... can be
    abbreviated"). Returns the full choice or None (unknown or ambiguous)."""
    word = word.lower()
    if word in choices:
        return word
    if len(word) < minimum:
        return None
    found = [c for c in choices if c.startswith(word)]
    return found[0] if len(found) == 1 else None


# ---------------------------------------------------------------------------
# netsh interface ipv4|ipv6 show|set dynamicportrange, show excludedportrange
# (learn.microsoft.com windowsserverdocs "netsh interface" (netsh-interface.md);
# KB929851 "The default dynamic port range for TCP/IP has changed since
# Windows Vista and in Windows Server 2008").
# ---------------------------------------------------------------------------
_IP_SHOW = ("addresses", "compartments", "config", "destinationcache", "dnsservers", "dynamicportrange",
            "excludedportrange", "global", "icmpstats", "interfaces", "ipaddresses", "ipnettomedia", "ipstats",
            "joins", "neighbors", "offload", "route", "subinterfaces", "tcpconnections", "tcpstats",
            "udpconnections", "udpstats", "winsservers")
_IP_ADD = ("address", "dnsservers", "excludedportrange", "neighbors", "route", "winsservers")
_IP_DELETE = ("address", "arpcache", "destinationcache", "dnsservers", "excludedportrange", "neighbors", "route",
              "winsservers")
_IP_SET = ("address", "compartment", "dnsservers", "dynamicportrange", "global", "interface", "neighbors", "route",
           "subinterface", "winsservers")
_IP_VERBS = ("add", "delete", "dump", "help", "install", "reset", "set", "show", "uninstall")
_EMULATED = {("show", "dynamicportrange"): ("protocol", "store"),
             ("show", "excludedportrange"): ("protocol", "store"),
             ("set", "dynamicportrange"): ("protocol", "startport", "numberofports", "store"),
             ("add", "excludedportrange"): ("protocol", "startport", "numberofports", "store"),
             ("delete", "excludedportrange"): ("protocol", "startport", "numberofports", "store")}
_REQUIRED = {("show", "dynamicportrange"): ("protocol",),
             ("show", "excludedportrange"): ("protocol",),
             ("set", "dynamicportrange"): ("protocol", "startport", "numberofports"),
             ("add", "excludedportrange"): ("protocol", "startport", "numberofports"),
             ("delete", "excludedportrange"): ("protocol", "startport", "numberofports")}


class _NetshError(Exception):
    pass


def _netsh_params(argv, tags):
    """Tagged (``tag=value``, tag abbreviable) or positional parameters."""
    params = {}
    position = 0
    for arg in argv:
        if "=" in arg:
            tag, value = arg.split("=", 1)
            full = _prefix_match(tag, tags)
            if full is None or full in params:
                raise _NetshError("param_incorrect")
        else:
            while position < len(tags) and tags[position] in params:
                position += 1
            if position >= len(tags):
                raise _NetshError("param_incorrect")
            full, value = tags[position], arg
        params[full] = value
    return params


def run_netsh(host, argv):
    lang = host.language
    words = list(argv)
    if len(words) < 4:
        return ToolResult(_lines(text(lang, "cmd_not_found", cmd=" ".join(words))), "", 1)
    context = _prefix_match(words[0], ("interface",), minimum=3)
    ip = words[1].lower() if words[1].lower() in IP_VERSIONS else None
    verb = _prefix_match(words[2], _IP_VERBS, minimum=2)
    items = {"show": _IP_SHOW, "set": _IP_SET, "add": _IP_ADD, "delete": _IP_DELETE}.get(verb, ())
    item = _prefix_match(words[3], items, minimum=2)
    if context is None or ip is None or (verb, item) not in _EMULATED:
        return ToolResult(_lines(text(lang, "cmd_not_found", cmd=" ".join(words))), "", 1)
    try:
        params = _netsh_params(words[4:], _EMULATED[(verb, item)])
        missing = [t for t in _REQUIRED[(verb, item)] if t not in params]
        if missing:
            raise _NetshError("param_missing")
        proto = _prefix_match(params["protocol"], PROTOCOLS)
        store = _prefix_match(params.get("store", "active" if verb == "show" else "persistent"),
                              ("active", "persistent"))
        if proto is None or store is None:
            raise _NetshError("param_incorrect")
        layout = host.layout
        if verb == "show" and item == "dynamicportrange":
            start, num = host.dynamic_range(ip, proto, store=store)
            # A range outside netsh's own limits (start=1024 num=64511, left by some
            # installers) is shown as it is. Labels padded to the profile's width
            # (host.LAYOUTS: 18 columns on build 26200, no blank line before the title).
            width = max(layout["dyn_label_width"], len(text(lang, "dyn_num")) + 1, len(text(lang, "dyn_start")) + 1)
            head = [""] if layout["dyn_blank_first"] else []
            return ToolResult(_lines(*head, text(lang, "dyn_title", proto=proto), text(lang, "dyn_dashes"),
                                     "%s: %d" % (text(lang, "dyn_start").ljust(width), start),
                                     "%s: %d" % (text(lang, "dyn_num").ljust(width), num), ""))
        if verb == "show" and item == "excludedportrange":
            # Administered exclusions carry "*" in a last column; on some builds the
            # English header and the other rows are padded for that column (six spaces).
            pad = "      " if layout["excl_padding"] and lang == "en-US" else ""
            rows = []
            for start, end, administered in host.excluded_ranges(ip, proto, store=store):
                rows.append("%10d  %10d%s" % (start, end, "     *" if administered else pad))
            return ToolResult(_lines("", text(lang, "excl_title", proto=proto), "", text(lang, "excl_header") + pad,
                                     text(lang, "excl_dashes"), *rows, "", text(lang, "excl_footer"), ""))
        if item == "excludedportrange":
            return _netsh_exclusion(host, lang, verb, ip, proto, store, params)
        # set dynamicportrange. KB929851: "The minimum range of ports that can be
        # set is 255. The minimum start port that can be set is 1025. The maximum
        # end port (based on the range being configured) cannot exceed 65535."
        # netsh answers with ERROR_INVALID_PARAMETER's text and exit code 1.
        if not (params["startport"].isdigit() and params["numberofports"].isdigit()):
            raise _NetshError("param_incorrect")
        start, num = int(params["startport"]), int(params["numberofports"])
        if start < 1025 or num < 255 or start + num - 1 > 65535:
            raise _NetshError("param_incorrect")
        # "The dynamic port range ... takes effect immediately" (store=persistent is
        # the default of set and survives a restart; store=active is lost at boot).
        host.set_dynamic_range(start, num, ip=ip, proto=proto, store=store)
        return ToolResult(_lines(text(lang, "ok"), ""))
    except _NetshError as exc:
        return ToolResult(_lines(text(lang, exc.args[0]), ""), "", 1)


def _netsh_exclusion(host, lang, verb, ip, proto, store, params):
    """netsh int ipv4|ipv6 add|delete excludedportrange protocol= startport= numberofports= [store=]
    (learn.microsoft.com windowsserverdocs netsh-interface.md, "add excludedportrange": store=active lasts until
    the next boot, store=persistent is the default and survives it; an administered exclusion is listed with
    "*"). Refusals as users report them: adding a range that overlaps an exclusion, or holds a port something
    listens on, fails with ERROR_SHARING_VIOLATION's text "The process cannot access the file because it is being
    used by another process." (docker/for-win#3171, microsoft/WSL#5306); deleting a range that is not an
    administered exclusion fails with ERROR_NOT_FOUND's "Element not found." (UNCONFIRMED wording). Exit code 1.
    A persistent add is in effect at once, as set dynamicportrange's persistent store is (KB929851)."""
    if not (params["startport"].isdigit() and params["numberofports"].isdigit()) \
            or len(params["startport"]) > 5 or len(params["numberofports"]) > 5:
        raise _NetshError("param_incorrect")
    start, num = int(params["startport"]), int(params["numberofports"])
    end = start + num - 1
    if start < 1 or num < 1 or end > 65535:
        raise _NetshError("param_incorrect")
    with host.lock:
        if verb == "add":
            for entry in host.excluded:
                if entry["ip"] == ip and entry["proto"] == proto and (entry["active"] or entry["persistent"]) \
                        and entry["start"] <= end and start <= entry["end"]:
                    raise _NetshError("in_use")
            if any(c["State"] == "Listen" and start <= c["LocalPort"] <= end and _family_of(c["LocalAddress"]) == ip
                   for c in host.connections):
                raise _NetshError("in_use")
            host.add_excluded(start, end, ip=ip, proto=proto, administered=True, persistent=store == "persistent")
            return ToolResult(_lines(text(lang, "ok"), ""))
        entry = host.find_excluded(start, end, ip=ip, proto=proto, store=store)
        if entry is None or not entry["administered"]:
            raise _NetshError("not_found")
        if store == "persistent" or not entry["persistent"]:
            host.excluded.remove(entry)
        else:
            entry["active"] = False  # back at the next boot, from the persistent store
        return ToolResult(_lines(text(lang, "ok"), ""))


def _family_of(address):
    return "ipv6" if ":" in str(address) else "ipv4"


# ---------------------------------------------------------------------------
# reg query|add|delete (learn.microsoft.com windows-commands "reg query",
# "reg add", "reg delete"). Output layout as reg.exe prints it: a blank line,
# the key with its root spelled out, one "    Name    TYPE    data" line per
# value (REG_DWORD/REG_QWORD as 0x hex), a blank line, then subkeys.
# ---------------------------------------------------------------------------
_ROOTS = {"HKLM": "HKEY_LOCAL_MACHINE", "HKEY_LOCAL_MACHINE": "HKEY_LOCAL_MACHINE",
          "HKCU": "HKEY_CURRENT_USER", "HKEY_CURRENT_USER": "HKEY_CURRENT_USER",
          "HKCR": "HKEY_CLASSES_ROOT", "HKEY_CLASSES_ROOT": "HKEY_CLASSES_ROOT",
          "HKU": "HKEY_USERS", "HKEY_USERS": "HKEY_USERS",
          "HKCC": "HKEY_CURRENT_CONFIG", "HKEY_CURRENT_CONFIG": "HKEY_CURRENT_CONFIG"}


def _format_data(rtype, data):
    if rtype in ("REG_DWORD", "REG_QWORD"):
        return "0x%x" % data
    if rtype == "REG_MULTI_SZ":
        return "\\0".join(data) if isinstance(data, (list, tuple)) else str(data)
    if rtype == "REG_BINARY":
        return data.hex().upper() if isinstance(data, (bytes, bytearray)) else str(data)
    return str(data)


def _value_line(value):
    name, rtype, data = value
    return "    %s    %s    %s" % (name, rtype, _format_data(rtype, data))


def _reg_options(args):
    """Split reg's switches (``/v`` or ``-v``, case-insensitive) from positionals."""
    opts = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg[:1] in ("/", "-") and len(arg) > 1:
            name = arg[1:].lower()
            if name in ("v", "t", "d", "se"):
                if i + 1 >= len(args) or name in opts:
                    raise _RegError("reg_invalid_syntax")
                opts[name] = args[i + 1]
                i += 2
                continue
            if name in ("f", "ve", "s", "reg:32", "reg:64"):
                opts[name] = True
                i += 1
                continue
            raise _RegError("reg_invalid_syntax")
        raise _RegError("reg_invalid_syntax")
    return opts


class _RegError(Exception):
    pass


def run_reg(host, argv):
    lang = host.language
    if not argv:
        return ToolResult("", _lines(text(lang, "reg_invalid_syntax", verb="").replace("REG  /?", "REG /?")), 1)
    verb = argv[0].upper()
    if verb not in ("QUERY", "ADD", "DELETE"):
        return ToolResult("", _lines(text(lang, "reg_invalid_syntax", verb="").replace("REG  /?", "REG /?")), 1)
    try:
        if len(argv) < 2:
            raise _RegError("reg_invalid_syntax")
        keyname = argv[1].rstrip("\\")
        root, dummy, rest = keyname.partition("\\")
        if root.upper() not in _ROOTS:
            raise _RegError("reg_invalid_key")
        shown = _ROOTS[root.upper()] + ("\\" + rest if rest else "")
        opts = _reg_options(argv[2:])
        is_hklm = _ROOTS[root.upper()] == "HKEY_LOCAL_MACHINE"
        with host.lock:
            if verb == "QUERY":
                return _reg_query(host, lang, shown, rest if is_hklm else None, opts)
            if verb == "ADD":
                return _reg_add(host, lang, rest if is_hklm else None, opts)
            return _reg_delete(host, lang, rest if is_hklm else None, opts)
    except _RegError as exc:
        return ToolResult("", _lines(text(lang, exc.args[0], verb=verb)), 1)


def _reg_query(host, lang, shown, path, opts):
    values = host.key_values(path) if path is not None else None
    if values is None:
        return ToolResult("", _lines(text(lang, "reg_not_found")), 1)
    if "v" in opts:
        found = host.get_value(path, opts["v"])
        if found is None:
            return ToolResult("", _lines(text(lang, "reg_not_found")), 1)
        return ToolResult(_lines("", shown, _value_line(found), ""))
    out = ["", shown] + [_value_line(v) for v in values] + [""]
    subkeys = host.key_subkeys(path)
    out += ["%s\\%s" % (shown, s) for s in subkeys]
    return ToolResult(_lines(*out))


def _parse_reg_number(data, rtype):
    """reg add /d for REG_DWORD/REG_QWORD takes decimal or 0x-prefixed hex."""
    s = data.strip()
    try:
        number = int(s, 16) if s.lower().startswith("0x") else int(s, 10)
    except ValueError:
        raise _RegError("reg_invalid_syntax")
    limit = 0xFFFFFFFF if rtype == "REG_DWORD" else 0xFFFFFFFFFFFFFFFF
    if not 0 <= number <= limit:
        raise _RegError("reg_invalid_syntax")
    return number


def _reg_add(host, lang, path, opts):
    if path is None or "s" in opts:
        raise _RegError("reg_invalid_syntax")
    rtype = opts.get("t", "REG_SZ").upper()
    if rtype not in ("REG_SZ", "REG_EXPAND_SZ", "REG_MULTI_SZ", "REG_DWORD", "REG_QWORD", "REG_BINARY", "REG_NONE"):
        raise _RegError("reg_invalid_syntax")
    if "v" not in opts:
        host.ensure_key(path)
        return ToolResult(_lines(text(lang, "reg_ok")))
    data = opts.get("d", "")
    if rtype in ("REG_DWORD", "REG_QWORD"):
        data = _parse_reg_number(data, rtype)
    elif rtype == "REG_MULTI_SZ":
        data = data.split("\\0") if data else []
    if host.get_value(path, opts["v"]) is not None and "f" not in opts:
        # Without /f reg asks on the console; a non-interactive session answers
        # nothing, which reg takes as No. (UNCONFIRMED exact behaviour over WinRM.)
        return ToolResult(text(lang, "reg_overwrite", name=opts["v"]) + _lines(text(lang, "reg_canceled")))
    host.put_value(path, opts["v"], rtype, data)
    return ToolResult(_lines(text(lang, "reg_ok")))


def _reg_delete(host, lang, path, opts):
    if path is None or host.key_values(path) is None:
        return ToolResult("", _lines(text(lang, "reg_not_found")), 1)
    if "v" not in opts:
        raise _RegError("reg_invalid_syntax")  # deleting whole keys is not emulated
    if host.get_value(path, opts["v"]) is None:
        return ToolResult("", _lines(text(lang, "reg_not_found")), 1)
    if "f" not in opts:
        return ToolResult(text(lang, "reg_delete_confirm", name=opts["v"]) + _lines(text(lang, "reg_canceled")))
    host.remove_value(path, opts["v"])
    return ToolResult(_lines(text(lang, "reg_ok")))


# ---------------------------------------------------------------------------
# wevtutil qe <log> /q:<XPath> /f:xml /rd:true /c:N (learn.microsoft.com
# windows-commands "wevtutil"; the XPath subset of "Consuming Events" /
# "Event Selection" in the Windows Event Log docs, incl. timediff(@SystemTime)
# in milliseconds). /f:xml prints one <Event> element per line.
# ---------------------------------------------------------------------------
# Win32 error codes wevtutil exits with: ERROR_EVT_INVALID_QUERY 15001,
# ERROR_EVT_CHANNEL_NOT_FOUND 15007 (learn.microsoft.com "System Error Codes
# (12000-15999)"); the message wording is UNCONFIRMED.
EVT_INVALID_QUERY = 15001
EVT_CHANNEL_NOT_FOUND = 15007
EVENT_NS = "http://schemas.microsoft.com/win/2004/08/events/event"
# Tcpip 4227 and 4231 are Warnings: 4231 is 0x80001087 in netevent.h (the
# Windows SDK), severity bits 10 = warning, so Qualifiers 32768 (0x8000) and
# Level 3; 4227 (0x80001083) likewise (learn.microsoft.com troubleshoot "Troubleshoot
# port exhaustion issues" shows both in the System log).
_EVENT_LEVEL = {4227: (3, 32768), 4231: (3, 32768)}

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+)|(?P<str>'[^']*'|\"[^\"]*\")|(?P<op><=|>=|!=|=|<|>)|(?P<punct>[\[\]()*@/])"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_:.-]*))")


class _QueryError(Exception):
    pass


def _either(a, b):
    return lambda ev: a(ev) or b(ev)


def _both(a, b):
    return lambda ev: a(ev) and b(ev)


class _XPath:
    """A parser for the structured-XPath subset of the event log query language:
    ``*``, ``*[System[cond]]`` with cond := cond or cond | cond and cond | (cond)
    | Provider[@Name='X'] | EventID op N | Level op N | EventRecordID op N
    | TimeCreated[timediff(@SystemTime) op N]."""

    def __init__(self, query):
        self.tokens = []
        pos = 0
        query = query.strip()
        while pos < len(query):
            m = _TOKEN.match(query, pos)
            if not m or m.end() == pos:
                raise _QueryError(query)
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if tok[0] is None or (value is not None and tok[1].lower() != value.lower()):
            raise _QueryError(value)
        self.i += 1
        return tok

    def parse(self):
        self.take("*")
        if self.peek()[0] is None:
            return lambda ev: True
        self.take("[")
        self.take("System")
        self.take("[")
        cond = self.or_expr()
        self.take("]")
        self.take("]")
        if self.peek()[0] is not None:
            raise _QueryError("trailing")
        return cond

    def or_expr(self):
        left = self.and_expr()
        while self.peek() == ("name", "or"):
            self.take()
            right = self.and_expr()
            left = _either(left, right)
        return left

    def and_expr(self):
        left = self.primary()
        while self.peek() == ("name", "and"):
            self.take()
            right = self.primary()
            left = _both(left, right)
        return left

    def compare(self):
        op = self.take()
        if op[0] != "op":
            raise _QueryError(op)
        num = self.take()
        if num[0] != "num":
            raise _QueryError(num)
        value = int(num[1])
        ops = {"=": lambda a: a == value, "!=": lambda a: a != value, "<": lambda a: a < value,
               "<=": lambda a: a <= value, ">": lambda a: a > value, ">=": lambda a: a >= value}
        return ops[op[1]]

    def primary(self):
        kind, value = self.peek()
        if value == "(":
            self.take()
            inner = self.or_expr()
            self.take(")")
            return inner
        if kind != "name":
            raise _QueryError(value)
        self.take()
        name = value
        if name == "Provider":
            self.take("[")
            self.take("@")
            self.take("Name")
            self.take("=")
            s = self.take()
            if s[0] != "str":
                raise _QueryError(s)
            self.take("]")
            provider = s[1][1:-1]
            return lambda ev: ev["provider"].lower() == provider.lower()
        if name in ("EventID", "Level", "EventRecordID"):
            test = self.compare()
            field = {"EventID": lambda ev: ev["event_id"], "Level": lambda ev: _EVENT_LEVEL.get(ev["event_id"], (4, 0))[0],
                     "EventRecordID": lambda ev: ev["record_id"]}[name]
            return lambda ev: test(field(ev))
        if name == "TimeCreated":
            self.take("[")
            self.take("timediff")
            self.take("(")
            self.take("@")
            self.take("SystemTime")
            self.take(")")
            test = self.compare()
            self.take("]")
            return lambda ev: test(ev["age_ms"])
        raise _QueryError(name)


def _event_xml(host, ev):
    """One event as wevtutil /f:xml prints a classic (EventLog-API) Tcpip event, as captured: the provider by name
    only (``<Provider Name='Tcpip'/>``, no Guid: Tcpip logs through the classic API, not the
    Microsoft-Windows-TCPIP manifest), Keywords 0x80000000000000 (Classic), ProcessID 4, and EventData with
    unnamed ``<Data>`` strings followed by ``<Binary>`` (the raw data, hex)."""
    level, qualifiers = _EVENT_LEVEL.get(ev["event_id"], (4, 0))
    when = ev["time"].astimezone(UTC)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.") + "%07dZ" % (when.microsecond * 10)
    data = "".join("<Data>%s</Data>" % escape(str(d)) for d in ev["data"])
    binary = "<Binary>%s</Binary>" % ("0000000001000000" + "%08X" % ev["event_id"])
    return ("<Event xmlns='%s'><System><Provider Name='%s'/><EventID Qualifiers='%d'>%d</EventID>"
            "<Version>0</Version><Level>%d</Level><Task>0</Task><Opcode>0</Opcode><Keywords>0x80000000000000</Keywords>"
            "<TimeCreated SystemTime='%s'/><EventRecordID>%d</EventRecordID><Correlation/>"
            "<Execution ProcessID='4' ThreadID='%d'/><Channel>System</Channel><Computer>%s</Computer><Security/>"
            "</System><EventData>%s%s</EventData></Event>"
            % (EVENT_NS, escape(ev["provider"]), qualifiers, ev["event_id"], level, stamp, ev["record_id"],
               100 + ev["record_id"] % 900, escape(host.hostname), data, binary))


def run_wevtutil(host, argv):
    if not argv or argv[0].lower() not in ("qe", "query-events"):
        return ToolResult("", _lines("The parameter is incorrect."), 87)
    if len(argv) < 2 or argv[1][:1] in ("/", "-"):
        return ToolResult("", _lines("The parameter is incorrect."), 87)
    channel = argv[1]
    opts = {}
    names = {"q": "q", "query": "q", "f": "f", "format": "f", "rd": "rd", "reversedirection": "rd",
             "c": "c", "count": "c", "e": "e", "element": "e", "lf": "lf", "logfile": "lf", "sq": "sq",
             "structuredquery": "sq", "u": "u", "unicode": "u", "l": "l", "locale": "l", "bm": "bm",
             "bookmark": "bm", "sbm": "sbm", "savebookmark": "sbm"}
    for arg in argv[2:]:
        if arg[:1] not in ("/", "-") or ":" not in arg:
            return ToolResult("", _lines("The parameter is incorrect."), 87)
        name, value = arg[1:].split(":", 1)
        if name.lower() not in names:
            return ToolResult("", _lines("The parameter is incorrect."), 87)
        opts[names[name.lower()]] = value
    if set(opts) - {"q", "f", "rd", "c"} or opts.get("f", "text").lower() not in ("xml", "text", "renderedxml"):
        return ToolResult("", _lines("The parameter is incorrect."), 87)
    if channel.lower() != "system":
        return ToolResult("", _lines("Failed to read events. The specified channel could not be found."),
                          EVT_CHANNEL_NOT_FOUND)
    try:
        match = _XPath(opts.get("q", "*")).parse()
    except (_QueryError, KeyError):
        return ToolResult("", _lines("Failed to read events. The specified query is invalid."), EVT_INVALID_QUERY)
    if opts.get("f", "text").lower() == "text":
        # Text rendering is not part of the contract.
        return ToolResult("", _lines("The parameter is incorrect."), 87)
    count = None
    if "c" in opts:
        if not opts["c"].isdigit():
            return ToolResult("", _lines("The parameter is incorrect."), 87)
        count = int(opts["c"])
    reverse = opts.get("rd", "false").lower() == "true"
    now = host.now()
    with host.lock:
        events = sorted(host.events, key=lambda e: (e["time"], e["record_id"]))
        selected = []
        for ev in events:
            age_ms = (now - ev["time"]) / _dt.timedelta(milliseconds=1)
            if match(dict(ev, age_ms=age_ms)):
                selected.append(ev)
        if reverse:
            selected.reverse()
        if count is not None:
            selected = selected[:count]
        return ToolResult("".join(_event_xml(host, ev) + CRLF for ev in selected))


# ---------------------------------------------------------------------------
# The cmdlet pipelines. ConvertTo-Csv -NoTypeInformation in Windows
# PowerShell 5.1 writes a header row and every field double-quoted, embedded
# quotes doubled (learn.microsoft.com powershell 5.1 "ConvertTo-Csv").
# ---------------------------------------------------------------------------
def _csv_row(values):
    return ",".join('"%s"' % str(v).replace('"', '""') for v in values)


def run_get_nettcpconnection_csv(host):
    cols = ("LocalAddress", "LocalPort", "RemoteAddress", "RemotePort", "State", "OwningProcess")
    with host.lock:
        rows = [_csv_row(c[k] for k in cols) for c in host.connections]
    if not rows:
        return ""
    return _lines(_csv_row(cols), *rows)


def run_get_listeners_csv(host):
    """Get-NetTCPConnection -State Listen (the -State filter of the cmdlet: learn.microsoft.com
    "Get-NetTCPConnection"), two properties."""
    cols = ("LocalAddress", "LocalPort")
    with host.lock:
        rows = [_csv_row(c[k] for k in cols) for c in host.connections if c["State"] == "Listen"]
    if not rows:
        return ""
    return _lines(_csv_row(cols), *rows)


def run_get_process_csv(host):
    # Get-Process returns the processes sorted by name (then Id).
    with host.lock:
        procs = sorted(host.processes, key=lambda p: (p["ProcessName"].lower(), p["Id"]))
    return _lines(_csv_row(("Id", "ProcessName")), *[_csv_row((p["Id"], p["ProcessName"])) for p in procs])


def run_get_service_csv(host):
    """Get-CimInstance -ClassName Win32_Service, two properties (learn.microsoft.com "Get-CimInstance"; cimwin32prov
    "Win32_Service class": ProcessId is the process the service runs in, 0 when it is not running; Name the
    service's unique name). Instances in the order of their Name (UNCONFIRMED: the provider's order; nothing may
    depend on it). ConvertTo-Csv as above."""
    with host.lock:
        services = sorted(host.services, key=lambda s: s["Name"].lower())
    return _lines(_csv_row(("ProcessId", "Name")), *[_csv_row((s["ProcessId"], s["Name"])) for s in services])


NATIVE = {"netsh": run_netsh, "reg": run_reg, "wevtutil": run_wevtutil}


# ---------------------------------------------------------------------------
# A program planted on PATH. PowerShell finds a bare command name (``netsh``) by
# searching the folders of $env:PATH in order, the first match wins
# (learn.microsoft.com about_Command_Precedence, "Command precedence": "...
# PowerShell searches ... the directories listed in the Path environment
# variable"); a folder before System32 that someone else can write to lets
# them run their netsh.exe as the administrator who runs the command. The
# simulator's PATH is System32 and, after ``host.plant_on_path(name)``, such a
# folder: a bare name then runs the planted program, which changes nothing and
# prints what a faker would, while a call by full path still runs the tool.
# ---------------------------------------------------------------------------
PLANTED_OUTPUT = {
    "netsh": ("", "Protocol tcp Dynamic Port Range", "---------------------------------", "Start Port      : 1025",
              "Number of Ports : 64511", ""),
    "reg": ("", "HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters",
            "    TcpTimedWaitDelay    REG_DWORD    0x1e", ""),
    "wevtutil": ("",),
}


def run_planted(host, program, argv):
    with host.lock:
        host.planted_runs.append([program] + list(argv))
    return ToolResult(_lines(*PLANTED_OUTPUT[program]))
