"""linux_trace: the trace line parser (captured text, odd and hostile text) and the tally of a traced sample.

data/trace_capture.txt was captured on Linux 6.18 by data/capture_trace.py (see its docstring): a python client
(pid 21935) holds 10 connections in a 10-port range, fails the 11th (EADDRNOTAVAIL), closes the 10 first
(TIME_WAIT here), then connects over IPv6 to a server that closes first; a shell (21966) runs curl twice.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_trace import (
    MAX_LINE,
    NEW,
    TraceTally,
    parse_line,
    parse_lines,
    process_key,
)

DATA = Path(__file__).resolve().parent / "data"
CAPTURE = (DATA / "trace_capture.txt").read_text()
META = json.loads((DATA / "trace_capture.json").read_text())
LOOP4 = socket.inet_pton(socket.AF_INET, "127.0.0.1")
LOOP6 = socket.inet_pton(socket.AF_INET6, "::1")
DEST = (4, LOOP4, 8080)
NETNS = "net:[4026531840]"
STATE = ("family=AF_INET protocol=IPPROTO_TCP sport=%d dport=8080 saddr=127.0.0.1 daddr=127.0.0.1 "
         "saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 oldstate=TCP_%s newstate=TCP_%s")


def line(comm, tgid, stamp, event, body, tid=None):
    tid = tgid if tid is None else tid
    return "%16s-%-7d (%7s) [000] ..... %.6f: %s: %s" % (comm, tid, tgid if tgid else "-------", stamp, event, body)


def connect(comm, tgid, stamp):
    return line(comm, tgid, stamp, "inet_sock_set_state", STATE % (0, "CLOSE", "SYN_SENT"))


def fork(comm, parent, child, stamp):
    return line(comm, parent, stamp, "sched_process_fork",
                "comm=%s pid=%d child_comm=%s child_pid=%d" % (comm, parent, comm, child))


def leave(comm, tgid, stamp):
    return line(comm, tgid, stamp, "sched_process_exit", "comm=%s pid=%d prio=120 group_dead=true" % (comm, tgid))


class FakeHost:
    """What TraceTally asks of LinuxHost: who a process is and its namespace, while it runs."""

    own_netns = NETNS

    def __init__(self, alive=None, netns=None):
        self.alive = {} if alive is None else alive  # pid -> start_time
        self.other = netns or {}
        self.reads = []

    def identify(self, pid):
        self.reads.append(pid)
        if pid not in self.alive:
            return None
        return {"pid": pid, "name": "proc%d" % pid, "cmdline": None, "start_time": self.alive[pid]}

    def netns(self, pid):
        if pid not in self.alive:
            return None
        return self.other.get(pid, NETNS)


def tally_of(lines, host=None, **kwargs):
    tally = TraceTally(FakeHost() if host is None else host, **kwargs)
    parse_lines("\n".join(lines) + "\n", tally)
    return tally


# ---------------------------------------------------------------- the parser
def test_every_captured_line_parses():
    parsed = [parse_line(text) for text in CAPTURE.splitlines()]
    assert None not in parsed
    events = [item[0] for item in parsed]
    assert events.count("sys_exit_connect") == 1
    states = [item[5] for item in parsed if item[0] == "inet_sock_set_state"]
    assert (6, LOOP6, 0, LOOP6, 8081, 7, 2) in states  # IPv6 keeps its addresses in the default format
    assert sum(1 for state in states if state[5:] == (5, 7)) == 10  # FIN_WAIT2 -> CLOSE: TIME_WAIT entered


def test_the_captured_client_is_counted_exactly():
    client = int(META["client"].split("client ")[1])
    host = FakeHost(alive={client: 10630.0, 21900: 10000.0, 21966: 10631.6})
    tally = TraceTally(host)
    parse_lines(CAPTURE, tally)
    assert tally.bad_lines == 0 and tally.lost == 0
    proc = tally.processes[process_key(client)]
    assert proc.destinations[DEST] == [10, 10, 1]  # 10 opened, 10 into TIME_WAIT here, 1 without a port
    assert proc.destinations[(6, LOOP6, 8081)] == [1, 0, 0]  # the server closed first: no TIME_WAIT here
    assert proc.failed == 1


def test_the_captured_processes_forked_and_gone_fold_into_the_capture():
    host = FakeHost(alive={21935: 10630.0, 21900: 10000.0, 21966: 10631.6})
    tally = TraceTally(host)
    parse_lines(CAPTURE, tally)
    out = tally.finish()
    assert list(out) == [process_key(21900)]  # client, shell and curls were all born and gone in the sample
    entry = out[process_key(21900)]
    assert entry["spawned"] == {"command": "curl", "count": 3}
    assert entry["destinations"][DEST][NEW] == 12


def test_the_captured_bind_before_connect_is_counted_by_its_port_at_connect():
    # CLOSE -> SYN_SENT carries the local port already bound: the bound socket's (40001) and the one bound to
    # 5000 (outside the range); 0 for a plain connect() and after IP_BIND_ADDRESS_NO_PORT (the port comes later)
    meta = json.loads((DATA / "trace_bound_capture.json").read_text())
    text = (DATA / "trace_bound_capture.txt").read_text()
    for ephemeral, counted in (((40000, 40009), 1), (None, 2), ((1024, 4999), 0)):
        tally = TraceTally(FakeHost(alive={meta["pid"]: 20552.0}), ephemeral=ephemeral)
        parse_lines(text, tally)
        proc = tally.processes[process_key(meta["pid"])]
        assert proc.bound == counted, ephemeral
        assert proc.destinations[DEST][NEW] == 4
        assert tally.finish()[process_key(meta["pid"])]["bound"] == counted


def test_bound_ports_of_a_spawned_child_fold_into_its_parent():
    bound_connect = line("client", 12, 1.1, "inet_sock_set_state", STATE % (40003, "CLOSE", "SYN_SENT"))
    tally = tally_of([fork("sh", 11, 12, 1.0), bound_connect, leave("client", 12, 1.2)],
                     host=FakeHost(alive={11: 1.0}), ephemeral=(40000, 40009))
    out = tally.finish()
    assert list(out) == [process_key(11)] and out[process_key(11)]["bound"] == 1


def test_lost_and_odd_lines():
    assert parse_line("CPU:1 [LOST 42 EVENTS]") == ("lost", 42)
    for text in ("", " ", "garbage", "x" * (MAX_LINE + 1), "\x00\x1b[31m", "-1 (1) [0] . 1.0: sched_process_exit: x",
                 line("a", 1, 1.0, "inet_sock_set_state", "family=AF_INET nothing else"),
                 line("a", 1, 1.0, "sched_process_fork", "comm=a pid=1 child_comm=a child_pid=notanumber"),
                 line("a", 1, 1.0, "inet_sock_set_state",
                      STATE.replace("127.0.0.1", "999.1.1.1") % (0, "CLOSE", "SYN_SENT")),
                 line("a", 1, 1.0, "inet_sock_set_state",
                      (STATE % (0, "CLOSE", "SYN_SENT")).replace("8080", "99999")),
                 line("a", 1, 1.0, "sys_connect", "0xzz").replace("sys_connect: ", "sys_connect -> "),
                 line("a", 1, 1.0, "other_event", "x=1"), None, 42):
        assert parse_line(text) is None


@pytest.mark.parametrize("text", CAPTURE.splitlines()[:12])
def test_a_truncated_line_never_raises(text):
    for end in range(len(text)):
        parse_line(text[:end])


def test_a_comm_or_file_name_cannot_forge_a_line():
    forged = connect("curl", 4242, 5.0)
    exec_line = line("evil", 77, 1.0, "sched_process_exec", "filename=/tmp/%s pid=77 old_pid=77" % forged)
    parsed = parse_line(exec_line)
    assert parsed[0] == "sched_process_exec" and parsed[3] == 77
    comm = line("\x1b]0;x\u202e", 78, 1.0, "sched_process_exit", "comm=x pid=78 prio=120 group_dead=true")
    assert parse_line(comm)[1] == "\\x1b]0;x\\u202e"  # cleaned at the source


def test_lines_split_anywhere_count_the_same():
    whole = TraceTally(FakeHost(alive={21935: 10630.0}))
    parse_lines(CAPTURE, whole)
    for size in (1, 7, 100, 4096):
        pieces = TraceTally(FakeHost(alive={21935: 10630.0}))
        rest = ""
        for start in range(0, len(CAPTURE), size):
            rest = parse_lines(CAPTURE[start:start + size], pieces, rest)
        assert rest == ""
        assert pieces.processes[process_key(21935)].destinations == whole.processes[process_key(21935)].destinations


def test_an_unfinished_line_too_long_is_dropped():
    tally = TraceTally(FakeHost())
    assert parse_lines("x" * (MAX_LINE + 5), tally) == ""
    assert tally.bad_lines == 1


# ---------------------------------------------------------------- the tally
def test_a_shell_loop_is_one_entry_with_its_children_folded():
    lines = []
    for n in range(5):
        child = 101 + n
        lines += [fork("sh", 100, child, 1.0 + n), connect("curl", child, 1.01 + n), leave("curl", child, 1.02 + n)]
    host = FakeHost(alive={100: 0.5})
    out = tally_of(lines, host).finish()
    assert list(out) == [process_key(100)]
    entry = out[process_key(100)]
    assert entry["pid"] == 100 and entry["who"]["name"] == "proc100"
    assert entry["spawned"] == {"command": "curl", "count": 5}
    assert entry["destinations"][DEST] == [5, 0, 0]


def test_a_child_still_running_keeps_its_own_entry():
    lines = [fork("sh", 100, 101, 1.0), connect("worker", 101, 1.1)]
    out = tally_of(lines, FakeHost(alive={100: 0.5, 101: 1.0})).finish()
    assert set(out) == {process_key(101)} and out[process_key(101)]["spawned"] is None


def test_the_loop_request_in_flight_at_the_end_joins_its_ended_siblings():
    lines = []
    for n in range(3):
        child = 101 + n
        lines += [fork("sh", 100, child, 1.0 + n), connect("curl", child, 1.01 + n), leave("curl", child, 1.02 + n)]
    lines += [fork("sh", 100, 110, 4.0), connect("curl", 110, 4.01),  # still running when the sample ends
              fork("sh", 100, 111, 4.1), connect("worker", 111, 4.11)]  # another command: its own entry
    out = tally_of(lines, FakeHost(alive={100: 0.5, 110: 4.0, 111: 4.1})).finish()
    assert set(out) == {process_key(100), process_key(111)}
    assert out[process_key(100)]["spawned"] == {"command": "curl", "count": 4}
    assert out[process_key(100)]["destinations"][DEST] == [4, 0, 0]


def test_a_reused_pid_never_inherits():
    lines = [connect("old", 200, 1.0), connect("old", 200, 1.1), leave("old", 200, 1.2),
             fork("init", 1, 200, 2.0), connect("new", 200, 2.1)]
    host = FakeHost(alive={1: 0.0, 200: 0.5})
    tally = TraceTally(host)
    parse_lines("\n".join(lines[:3]) + "\n", tally)
    host.alive[200] = 2.0  # the pid now belongs to the new process
    parse_lines("\n".join(lines[3:]) + "\n", tally)
    out = tally.finish()
    old, new = out[process_key(200)], out[process_key(200, 1)]
    assert old["ended"] and old["destinations"][DEST][NEW] == 2 and old["who"]["start_time"] == 0.5
    assert not new["ended"] and new["destinations"][DEST][NEW] == 1 and new["who"]["start_time"] == 2.0


def test_a_pid_taken_before_it_was_read_is_not_identified():
    host = FakeHost(alive={100: 0.5, 101: 9.0})  # 101 was forked at 1.0: what runs as 101 now started at 9.0
    lines = [fork("sh", 100, 101, 1.0), connect("curl", 101, 1.01)]
    tally = tally_of(lines, host)
    assert process_key(101) not in tally.who
    assert tally.finish()[process_key(101)]["comm"] == "curl"  # named from the trace, not from the stranger


def test_no_read_after_the_exit_event():
    host = FakeHost(alive={300: 0.5})
    tally = tally_of([leave("x", 300, 1.0), connect("x", 300, 1.1)], host)  # events after the exit event
    assert host.reads == [] and tally.unknown_namespace == 1


def test_failed_connects_and_a_server_closing_first():
    lines = [connect("c", 10, 1.0),
             line("c", 10, 1.0, "inet_sock_set_state", STATE % (0, "SYN_SENT", "CLOSE")),
             line("c", 10, 1.0, "sys_connect", "0xffffffffffffff9d").replace("sys_connect: ", "sys_connect -> "),
             connect("c", 10, 1.1)]
    proc = tally_of(lines, FakeHost(alive={10: 0.0})).processes[process_key(10)]
    assert proc.destinations[DEST] == [1, 0, 1] and proc.failed == 1


def test_time_wait_goes_to_the_task_that_closed_first():
    lines = [connect("c", 10, 1.0),
             line("c", 10, 1.1, "inet_sock_set_state", STATE % (40001, "ESTABLISHED", "FIN_WAIT1")),
             line("<idle>", 0, 1.2, "inet_sock_set_state", STATE % (40001, "FIN_WAIT2", "CLOSE"), tid=0),
             line("<idle>", 0, 1.3, "inet_sock_set_state", STATE % (40002, "FIN_WAIT2", "CLOSE"), tid=0)]
    tally = tally_of(lines, FakeHost(alive={10: 0.0}))
    assert tally.processes[process_key(10)].destinations[DEST] == [1, 1, 0]
    assert tally.unowned_time_wait == {DEST: 1}  # closed first before the sample: nobody to give it to
    assert tally.pending == {}


def test_a_listener_closing_first_is_not_a_client():
    lines = [line("srv", 10, 1.1, "inet_sock_set_state", STATE % (8443, "ESTABLISHED", "FIN_WAIT1"))]
    assert tally_of(lines, FakeHost(alive={10: 0.0}), listening={8443}).pending == {}


def test_namespaces_other_unknown_and_from_the_parent():
    host = FakeHost(alive={10: 0.0, 20: 0.0, 30: 0.0}, netns={20: "net:[1]"})
    lines = [connect("a", 10, 1.0), connect("b", 20, 1.0), connect("gone", 40, 1.0),
             fork("sh", 30, 31, 1.0), connect("child", 31, 1.1)]
    tally = tally_of(lines, host)
    assert set(tally.processes) == {process_key(10), process_key(31)}  # 31 is gone: its parent's namespace
    assert tally.other_namespace == 1 and tally.unknown_namespace == 1


def test_caps_count_what_they_drop():
    lines = [connect("a", pid, 1.0) for pid in (1, 2, 3)]
    tally = tally_of(lines, FakeHost(alive={1: 0, 2: 0, 3: 0}), max_processes=2)
    assert len(tally.processes) == 2 and tally.capped == {"processes": 1}
    lines = [line("c", 1, 1.0, "inet_sock_set_state", STATE % (port, "ESTABLISHED", "FIN_WAIT1"))
             for port in (40001, 40002)]
    tally = tally_of(lines, FakeHost(alive={1: 0}), max_sockets=1)
    assert len(tally.pending) == 1 and tally.capped == {"sockets": 1}
    lines = [line("a", 1, 1.0, "inet_sock_set_state",
                  STATE.replace("dport=8080", "dport=%d" % port) % (0, "CLOSE", "SYN_SENT")) for port in (1, 2, 3)]
    tally = tally_of(lines, FakeHost(alive={1: 0}), max_sockets=2)
    assert tally.capped == {"destinations": 1}


def test_lost_events_are_counted():
    tally = tally_of(["CPU:0 [LOST 7 EVENTS]", connect("a", 1, 1.0), "CPU:1 [LOST 3 EVENTS]"],
                     FakeHost(alive={1: 0}))
    assert tally.lost == 10 and tally.events == 1


def test_a_process_of_another_namespace_counts_only_while_it_owns_sockets_here():
    """Sockets keep the namespace they were created in: a process that moved counts when it still holds sockets
    of this namespace at the end, never otherwise (and never once it ended)."""
    host = FakeHost(alive={10: 0.0, 20: 0.0, 30: 0.0}, netns={20: "net:[1]", 30: "net:[1]"})
    lines = [connect("here", 10, 1.0), connect("moved", 20, 1.0), connect("moved", 20, 1.1),
             connect("elsewhere", 30, 1.0)]
    tally = tally_of(lines, host)
    assert set(tally.processes) == {process_key(10)} and tally.other_namespace == 3
    assert set(tally.finish()) == {process_key(10)} and tally.admitted_foreign == 0
    done = tally.finish(owners={10, 20})
    assert set(done) == {process_key(10), process_key(20)} and tally.admitted_foreign == 1
    assert done[process_key(20)]["destinations"][DEST][0] == 2
