"""win_port_usage_info's answer on Windows reads, from the real windows_usage on the simulator's tool output.

Each read (``Read``: ranges, excluded ranges, TcpTimedWaitDelay, connections, processes, events) is put on a
simulated host (tests/support/windows_sim), whose rendered netsh / reg / Get-NetTCPConnection / Get-Process /
wevtutil output the real ``windows_usage.audit()`` (or ``analyse_windows()`` on that output, for what the
simulator cannot make fail alone) turns into the answer: ``real``.

``patched`` is the reference: what win_port_usage_info answered at commit 2d23330 (windows_tcp.analyse_windows,
its analysis transcribed: analyse() in tuple scope, host-wide pool findings and win_tcp recommendations computed
beside it, then the result patched).  The real answer must give the same on the keys the reference defines
(``same()``); later work only added to its findings and recommendations (the dynamic range's exclusions, the
processes).  The tests check hand-picked and random reads.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as hs

from ansible_collections.tcpstack.tuning.plugins.module_utils import port_usage as pu
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import port_flags, start_count_range
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import windows_usage
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_commands import Marked, build_info_script
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import InfoOptions, IpVersion, Protocol
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_parse import Section, parse_read, split_sections
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import WindowsHost

from tests.support.windows_sim import Faults
from tests.support.windows_sim.connection import InProcessConnection, run_script, simulated_host

# Windows' constants (docs/windows_commands.md)
NETSH_MIN_START = 1025
TIME_WAIT_MIN, TIME_WAIT_MAX, TIME_WAIT_DEFAULT = 2, 300, 120
EVENT_MAX = 500
SHORTER_TIME_WAIT = 30
IP_VERSIONS = ("ipv4", "ipv6")
FAMILY = {"ipv4": 4, "ipv6": 6}


class Read(NamedTuple):
    """One read of a Windows host, parsed: what win_port_usage_info analyses."""

    ranges: Dict[str, Tuple[int, int]]  # TCP dynamic range per IP version: (start, number of ports)
    excluded: Dict[str, Tuple[Tuple[int, int, bool], ...]]  # TCP excluded ranges: (low, high, administered)
    time_wait: Any = None  # TcpTimedWaitDelay: int, {"type", "data"} (not a DWORD), or None
    max_user_port: Any = None
    rows: Optional[List[Dict[str, str]]] = None  # Get-NetTCPConnection rows; None: it failed
    names: Optional[Dict[int, str]] = None  # Get-Process: pid -> name; None: it failed
    events: Optional[List[Dict[str, Any]]] = None  # Tcpip 4227/4231 events; None: wevtutil failed
    events_error: str = "no output"
    top: int = 10
    hours: int = 24
    build: Optional[int] = 20348
    extra: Dict[str, Any] = {}  # dynamic_port_range, excluded_port_ranges: passed through as they are


# ---------------------------------------------------------------- the reference: its own tally (commit 2d23330)
def _family(address):
    address = (address or "").strip()
    if address.lower().startswith("::ffff:") and "." in address:
        return 4, address[7:]
    return (6 if ":" in address else 4), address


def _port_of(text):
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def _times(count):
    return "once" if count == 1 else "%d times" % count


def _pools(read):
    pools = []
    for ip in IP_VERSIONS:
        if read.ranges.get(ip) is not None:
            excluded = tuple((a, b) for a, b, _admin in read.excluded.get(ip, ()))
            pools.append(pu.Pool("%s dynamic" % ip, FAMILY[ip], start_count_range(*read.ranges[ip]), excluded))
    return pools


def _common(read):
    """Everything the two ways share: time wait, notes, unreadable, the tally, the events."""
    # pylint: disable=too-many-locals
    tw_value = read.time_wait
    time_wait = tw_value if isinstance(tw_value, int) and TIME_WAIT_MIN <= tw_value <= TIME_WAIT_MAX else TIME_WAIT_DEFAULT
    notes = []
    if tw_value is not None and not isinstance(tw_value, int):
        notes.append("TcpTimedWaitDelay is %s %r, which Windows ignores: TIME_WAIT lasts the default %d seconds"
                     % (tw_value["type"], tw_value["data"], TIME_WAIT_DEFAULT))
    elif tw_value is not None:
        notes.append("TcpTimedWaitDelay is %d in the registry; Windows reads it at boot, so it is in effect once the "
                     "host has restarted since it was set" % tw_value)
    unreadable = []
    rows = read.rows
    if rows is None:
        unreadable.append({"source": "Get-NetTCPConnection", "reason": "Get-NetTCPConnection failed or is missing (it "
                           "needs Windows Server 2012 / Windows 8 or later)"})
    elif read.names is None:
        unreadable.append({"source": "Get-Process", "reason": "Get-Process failed"})
    names = read.names or {}
    flags = {pool.family: port_flags(pool.port_range, pool.reserved) for pool in _pools(read)}
    states = None
    tuples = {}
    listening = set()
    by_process = {}
    if rows is not None:
        states = {"ipv4": {}, "ipv6": {}}
        for row in rows:
            family, _address = _family(row.get("LocalAddress"))
            tcp_state = (row.get("State") or "").strip()
            bucket = states["ipv%d" % family]
            bucket[tcp_state] = bucket.get(tcp_state, 0) + 1
            port = _port_of(row.get("LocalPort"))
            if tcp_state == "Listen" and port is not None:
                listening.add(port)
        for row in rows:
            tcp_state = (row.get("State") or "").strip()
            family, local = _family(row.get("LocalAddress"))
            port = _port_of(row.get("LocalPort"))
            if tcp_state == "Listen" or family not in flags or port is None or port in listening \
                    or not 0 <= port <= 65535 or not flags[family][port]:
                continue
            _rfamily, remote = _family(row.get("RemoteAddress"))
            entry = tuples.setdefault((family, local, remote, _port_of(row.get("RemotePort")) or 0), [0, 0])
            entry[0] += 1
            entry[1] += tcp_state == "TimeWait"
            pid = _port_of(row.get("OwningProcess"))
            proc = by_process.setdefault(pid, {"pid": pid, "name": names.get(pid), "ports_held": 0, "time_wait": 0})
            proc["ports_held"] += 1
            proc["time_wait"] += tcp_state == "TimeWait"
    events = {"hours": read.hours, "4227": None, "4231": None, "latest": None, "capped": False}
    found_events = []
    if read.events is not None:
        found = read.events
        events["4227"] = sum(1 for e in found if e["id"] == 4227)
        events["4231"] = sum(1 for e in found if e["id"] == 4231)
        events["latest"] = max((e["time"] for e in found if e["time"]), default=None)
        events["capped"] = len(found) >= EVENT_MAX
        more = "at least " if events["capped"] else ""
        if events["4231"]:
            found_events.append(("critical", "Tcpip event 4231 (an ephemeral port could not be allocated from the "
                                             "global TCP port space) was logged %s%s in the last %d hours"
                                 % (more, _times(events["4231"]), read.hours)))
        if events["4227"]:
            found_events.append(("warning", "Tcpip event 4227 (a connect failed because the local endpoint was "
                                            "recently used and is still in TIME_WAIT) was logged %s%s in the last %d "
                                            "hours" % (more, _times(events["4227"]), read.hours)))
    else:
        unreadable.append({"source": "wevtutil (System log, Tcpip 4227/4231)", "reason": read.events_error})
    processes = sorted(by_process.values(), key=lambda p: (-p["ports_held"], p["pid"] if p["pid"] is not None
                                                           else -1))[:read.top]
    settings_ = {"port_range": "%d %d" % start_count_range(*read.ranges["ipv4"]) if read.ranges.get("ipv4") else None,
                 "time_wait_delay": tw_value, "max_user_port": read.max_user_port}
    return dict(time_wait=time_wait, notes=notes, unreadable=unreadable, states=states, tuples=tuples,
                listening=listening, events=events, found_events=found_events, processes=processes,
                settings=settings_, source="Get-NetTCPConnection" if rows is not None else None)


# ---------------------------------------------------------------- the reference
def patched(read):
    """windows_tcp.analyse_windows (commit 2d23330) after parsing: analyse(), then its result patched."""
    common = _common(read)
    usable = {}
    for ip in IP_VERSIONS:  # windows_tcp._usable: its own interval arithmetic
        if read.ranges.get(ip) is not None:
            start, number = read.ranges[ip]
            low, high = start, min(start + number - 1, 65535)
            inside = [(max(a, low), min(b, high)) for a, b, _admin in read.excluded.get(ip, ()) if a <= high and b >= low]
            merged = []
            for a, b in sorted(inside):
                if merged and a <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
                else:
                    merged.append((a, b))
            usable[ip] = ((low, high), tuple(merged), (high - low + 1) - sum(b - a + 1 for a, b in merged))
    held = {"ipv4": 0, "ipv6": 0}
    for (family, _local, _remote, _port), (in_use, _tw) in common["tuples"].items():
        held["ipv%d" % family] += in_use
    extra = list(common["found_events"])
    hot = False
    for ip in IP_VERSIONS:
        if ip not in usable:
            continue
        (low, high), _excluded, count = usable[ip]
        if count <= 0:
            extra.append(("critical", "no usable %s dynamic ports: %d-%d is entirely excluded" % (ip, low, high)))
            hot = True
            continue
        fraction = float(held[ip]) / count
        severity = pu.level(fraction, pu.WARNING_PERCENT, pu.CRITICAL_PERCENT)
        if severity != "ok":
            hot = True
            extra.append((severity, "the host holds %s of %s usable %s dynamic TCP ports (%s); on Windows connect() "
                                    "takes them from one host-wide pool" % (pu.number(held[ip]), pu.number(count), ip,
                                                                            pu.percent(fraction))))
    v4 = usable.get("ipv4")
    snap = pu.Snapshot(settings={}, port_range=v4[0] if v4 else None, reserved=v4[1] if v4 else (),
                       min_port=NETSH_MIN_START, listening=common["listening"], states=common["states"],
                       tuples=common["tuples"], format_address=lambda family, key: key,
                       time_wait_seconds=common["time_wait"], source=common["source"],
                       unreadable=common["unreadable"], notes=common["notes"], extra_findings=extra)
    result = pu.analyse(snap, top=read.top)
    events, time_wait = common["events"], common["time_wait"]
    recommend = {}
    if hot or result["verdict"] == "critical" or events["4231"]:
        wider = pu.recommended_range(snap.port_range, v4[2] if v4 else None, NETSH_MIN_START)
        if wider is not None:
            recommend["port_range"] = "%d %d" % (wider[0], wider[1])
        if time_wait > 30:
            recommend["time_wait_delay"] = 30
    elif events["4227"] and time_wait > 30:
        recommend["time_wait_delay"] = 30
    result["recommendations"] = recommend
    result["settings"] = common["settings"]
    result.update(read.extra)
    if v4 is not None and usable.get("ipv6") is not None:
        six = usable["ipv6"]
        result["ephemeral_ipv6"] = {"range": list(six[0]), "size": six[0][1] - six[0][0] + 1, "usable": six[2]}
    result["ports_held_by_family"] = held
    result["processes"] = common["processes"]
    result["events"] = events
    result["build"] = read.build
    result["counters"] = None
    return result


# ---------------------------------------------------------------- the real one: the simulator's output, windows_usage
def _simulated(read):
    """A simulated host holding ``read``: its ranges, excluded ranges, registry, connections, processes, events."""
    registry = {}
    if isinstance(read.time_wait, int):
        registry["TcpTimedWaitDelay"] = ("REG_DWORD", read.time_wait)
    elif read.time_wait is not None:
        registry["TcpTimedWaitDelay"] = (read.time_wait["type"], read.time_wait["data"])
    if read.max_user_port is not None:
        registry["MaxUserPort"] = ("REG_DWORD", read.max_user_port)
    rows = [(r["LocalAddress"], int(r["LocalPort"]), r["RemoteAddress"], int(r["RemotePort"]), r["State"],
             int(r["OwningProcess"])) for r in read.rows or ()]
    return simulated_host(build=read.build, registry=registry,
                          ranges={(ip, "tcp"): r for ip, r in read.ranges.items() if r is not None},
                          excluded={(ip, "tcp"): rows_ for ip, rows_ in read.excluded.items()}, connections=rows,
                          processes=sorted((read.names or {}).items()), events=[e["id"] for e in read.events or ()])


def real(read):
    """win_port_usage_info's answer for ``read``: the simulator renders the host's tool output, the real
    windows_usage.analyse_windows reads it.

    What the simulator cannot make fail alone is made to fail in the rendered output: a range missing from the
    parsed state (netsh shows every range), and a failed Get-NetTCPConnection or Get-Process section.
    """
    options = InfoOptions(top=read.top)
    faults = Faults()
    if read.events is None:
        faults.fail_tool("wevtutil", times=10)
    host = _simulated(read)
    if all(r is not None for r in read.ranges.values()) and read.rows is not None and read.names is not None:
        conn = InProcessConnection(host=host, faults=faults)
        result = windows_usage.audit(WindowsHost(conn), options)  # the whole action: one round trip
        assert conn.round_trips == 1
        return result
    script = build_info_script(options.targets, options.event_hours)
    stdout = Marked(run_script(host, script, faults), script.marker)
    state = parse_read(stdout, options.targets)
    for ip, value in read.ranges.items():
        if value is None:
            del state.ranges[(IpVersion(ip), Protocol.TCP)]
    sections = split_sections(stdout)
    for word, failed in (("connections", read.rows is None), ("processes", read.names is None)):
        if failed:
            sections[word] = Section(["the cmdlet failed"], rc="False")
    return windows_usage.analyse_windows(options, state, sections)


# The keys of the answer that the real analysis gives exactly as the reference did.  Later work added to the
# others: findings and recommendations on the dynamic range's exclusions (dynamic_range_analysis), the processes
# (attribution: pooling findings, the cure), so there the reference's findings and recommendations must be in
# the real answer, and its verdict no worse.
SAME = ("settings", "ephemeral", "ephemeral_ipv6", "sockets", "ports_held", "ports_held_by_family", "counters",
        "capacity", "thresholds", "source", "build")


def both(read):
    """The real answer for ``read``, checked against the reference's."""
    result = real(read)
    same(result, patched(read))
    return result


def same(result, today):
    """``result`` (real) gives ``today`` (the reference's answer): equal on SAME, the rest contained."""
    for key in SAME:
        assert result.get(key) == today.get(key), key
    assert [dict(d, processes=None) for d in result["destinations"]] == [
        dict(d, processes=None) for d in today["destinations"]]
    assert [u["source"] for u in result["unreadable"] if u["source"] != "Win32_Service"] == \
        [u["source"] for u in today["unreadable"]]
    assert dict(result["events"], latest=None) == dict(today["events"], latest=None)
    assert [f for f in result["findings"] if f in today["findings"]] == today["findings"]
    assert pu.SEVERITY[result["verdict"]] >= pu.SEVERITY[today["verdict"]]
    assert set(today["recommendations"]) <= set(result["recommendations"])
    assert all(note in result["notes"] for note in today["notes"])


# ---------------------------------------------------------------- hand-picked reads
DEFAULT = {"ipv4": (49152, 16384), "ipv6": (49152, 16384)}


def row(local, port, remote, rport, state="TimeWait", pid=100):
    return {"LocalAddress": local, "LocalPort": str(port), "RemoteAddress": remote, "RemotePort": str(rport),
            "State": state, "OwningProcess": str(pid)}


def churn(local, remote, rport, count, first=49152, state="TimeWait"):
    return [row(local, first + n, remote, rport, state) for n in range(count)]


def read(rows=(), ranges=None, excluded=None, **fields):
    fields.setdefault("names", {100: "w3wp", 200: "java"})
    fields.setdefault("events", [])
    return Read(ranges=dict(DEFAULT, **(ranges or {})), excluded=excluded or {}, rows=list(rows) if rows is not None
                else None, **fields)


def test_quiet_host_is_ok():
    result = both(read(churn("10.0.0.5", "10.0.0.9", 443, 20)))
    assert result["verdict"] == "ok" and result["recommendations"] == {}
    assert result["ports_held_by_family"] == {"ipv4": 20, "ipv6": 0}
    assert result["counters"] is None and result["ephemeral_ipv6"]["usable"] == 16384


def test_host_wide_pool_is_short_though_no_tuple_is():
    """Ten destinations with 1,500 ports each: no tuple is near 16,384, the host-wide pool is (15,000 = 91%)."""
    rows = []
    for n in range(10):
        rows += churn("10.0.0.5", "10.0.1.%d" % n, 443, 1500, first=49152 + n * 1500)
    result = both(read(rows, time_wait=120))
    assert result["verdict"] == "critical"
    assert result["findings"][0] == ("the host holds 15,000 of 16,384 usable ipv4 dynamic TCP ports (91.5%); on "
                                     "Windows connect() takes them from one host-wide pool")
    assert result["recommendations"] == {"port_range": "32768 65535", "time_wait_delay": 30}
    assert all(d["utilisation"] < 0.1 for d in result["destinations"])


def test_fully_excluded_pool():
    result = both(read(excluded={"ipv4": ((49000, 65535, True),)}))
    assert result["ephemeral"]["usable"] == 0 and result["ephemeral"]["reserved"] == "49152-65535"
    assert "no usable ipv4 dynamic ports: 49152-65535 is entirely excluded" in result["findings"]
    assert result["recommendations"] == {"port_range": "32768 65535", "time_wait_delay": 30}  # TIME_WAIT: 120 s


def test_event_4231_alone_recommends_both_remedies():
    result = both(read(events=[{"id": 4231, "time": "2026-01-01T00:00:00Z"}], time_wait=60))
    assert result["verdict"] == "critical"
    assert result["recommendations"] == {"port_range": "32768 65535", "time_wait_delay": 30}


def test_event_4227_alone_shortens_time_wait_only():
    result = both(read(events=[{"id": 4227, "time": None}] * 2))
    assert result["verdict"] == "warning"
    assert result["recommendations"] == {"time_wait_delay": 30}


def test_ipv6_pool_short_widens_the_ipv4_range():
    rows = churn("2001:db8::5", "2001:db8::9", 443, 900, first=60000)
    result = both(read(rows, ranges={"ipv6": (60000, 1000)}, time_wait=30))
    assert result["verdict"] == "critical"
    assert result["ports_held_by_family"] == {"ipv4": 0, "ipv6": 900}
    assert result["ephemeral_ipv6"] == {"range": [60000, 60999], "size": 1000, "usable": 1000}
    assert result["recommendations"] == {"port_range": "32768 65535"}


def test_without_an_ipv4_range_or_connections():
    result = both(read(None, ranges={"ipv4": None}, names=None, events=None))
    assert result["ephemeral"]["usable"] is None and "ephemeral_ipv6" not in result
    assert result["sockets"] is None and result["source"] is None
    assert [u["source"] for u in result["unreadable"]] == ["Get-NetTCPConnection", "wevtutil (System log, Tcpip 4227/4231)"]


def test_an_empty_range_lists_no_inverted_interval():
    """The one difference: a range of 0 ports (netsh refuses it) with an excluded range over its start.

    The patched way reported the excluded ports inside it as "60000-59999"; the real one, through ports.py,
    reports none.  Everything else is the same.
    """
    empty = read(ranges={"ipv4": (60000, 0)}, excluded={"ipv4": ((59000, 61000, False),)})
    today, result = patched(empty), real(empty)
    assert today["ephemeral"]["reserved"] == "60000-59999" and result["ephemeral"]["reserved"] == ""
    today["ephemeral"]["reserved"] = ""
    same(result, today)
    assert result["ephemeral"] == {"range": [60000, 59999], "size": 0, "reserved": "", "reserved_in_range": 0,
                                   "usable": 0}


# ---------------------------------------------------------------- random reads
_range = hs.one_of(hs.none(), hs.tuples(hs.sampled_from([1025, 49152, 60000, 64000, 65500]),
                                        hs.sampled_from([1, 255, 1000, 16384])))
_excluded = hs.lists(hs.tuples(hs.integers(1000, 66000), hs.integers(0, 2000), hs.booleans())
                     .map(lambda t: (min(t[0], 65535), min(65535, t[0] + t[1]), t[2])), max_size=3).map(tuple)
_group = hs.tuples(hs.sampled_from(["10.0.0.5", "127.0.0.1", "2001:db8::5", "::ffff:10.0.0.7"]),
                   hs.sampled_from(["10.0.0.9", "10.0.0.10", "2001:db8::9", "::ffff:10.0.0.8"]),
                   hs.sampled_from([80, 443]), hs.integers(1, 3000), hs.sampled_from([1025, 49152, 60000, 64000]),
                   hs.sampled_from(["TimeWait", "Established", "CloseWait"]), hs.sampled_from([100, 200, 300]))
_time_wait = hs.one_of(hs.none(), hs.sampled_from([1, 30, 31, 120, 240, 301]),
                       hs.just({"type": "REG_SZ", "data": "30"}))
_events = hs.one_of(hs.none(), hs.lists(hs.sampled_from([4227, 4231]), max_size=3)
                    .map(lambda ids: [{"id": i, "time": "2026-01-0%dT00:00:00Z" % (1 + n)} for n, i in enumerate(ids)]))


@settings(max_examples=200, deadline=None)
@given(hs.fixed_dictionaries({"ipv4": _range, "ipv6": _range}), hs.fixed_dictionaries({"ipv4": _excluded,
                                                                                       "ipv6": _excluded}),
       _time_wait, hs.one_of(hs.none(), hs.lists(_group, max_size=4)), _events, hs.booleans(), hs.integers(1, 12))
def test_random_reads_give_the_same_answer(ranges, excluded, time_wait, groups, events, names, top):
    rows = None
    if groups is not None:
        rows = [row(local, first + n % 5000, remote, rport, state, pid)
                for local, remote, rport, count, first, state, pid in groups for n in range(count)]
        rows += [row("0.0.0.0", port, "0.0.0.0", 0, "Listen", 4) for port in (3389, 49153, 60001)]
    both(Read(ranges=ranges, excluded=excluded, time_wait=time_wait, rows=rows, events=events, top=top,
              names={100: "w3wp", 200: "java"} if names else None, extra={"dynamic_port_range": {"ipv4": {}}}))
