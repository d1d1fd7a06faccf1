# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which process opens the connections, from the kernel's tracepoints: the trace text parser and its tally, pure.

LinuxHost (linux_host_trace) enables, in a private tracefs instance with
``record-tgid`` and the ``boot`` clock, these events and hands on the text of
its trace_pipe; ``parse_line`` reads one line, ``TraceTally`` counts them:

- ``sock:inet_sock_set_state`` CLOSE -> SYN_SENT runs in the context of the
  task calling connect(): its tgid opens a connection towards (daddr, dport),
  whatever its lifetime and whoever closes first;
- ESTABLISHED -> FIN_WAIT1 runs in the task calling close() or shutdown():
  this end closes first, and its 4-tuple is remembered; a later -> CLOSE from
  FIN_WAIT1, FIN_WAIT2 or CLOSING (in any context) of that 4-tuple is a
  TIME_WAIT entered on this host, given to that task;
- SYN_SENT -> CLOSE with local port 0 (in the connecting task) is a connect()
  that got no local port; ``syscalls:sys_exit_connect`` filtered on
  ``ret == -99`` (EADDRNOTAVAIL) counts the failed calls per process;
- ``sched:sched_process_fork``/``exec``/``exit`` give each process its parent,
  its command and its end: a pid reused is a new process (a new generation
  starts at the fork that creates it again), and the short-lived children a
  process spawns are folded into it (``spawned``).

Everything here is bounded: at most MAX_SOCKETS 4-tuples waiting for their
close and MAX_PROCESSES processes; what a cap drops is counted (``capped``).
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import clean_text

EADDRNOTAVAIL = 99
MAX_SOCKETS = 200000
MAX_PROCESSES = 20000
MAX_LINE = 4096  # characters of one trace line; a longer one is not a line the kernel wrote for these events
FORK_SLACK = 0.02  # seconds: /proc/PID/stat starttime is in clock ticks (10 ms); a process read later than its fork
# by more than this is another process that took the pid

# comm-TID (TGID) [CPU] FLAGS TIMESTAMP: EVENT: BODY.  The comm is at most 15 characters (TASK_COMM_LEN), so a
# comm or a file name in the body cannot make a forged prefix match first.
_LINE = re.compile(r" *(.{0,16}?)-(\d{1,10}) +\( *([0-9-]{1,10})\) +\[\d{1,5}\] +\S{1,16} +(\d{1,12}\.\d{1,9}): "
                   r"([a-z_0-9]{1,40})(: ?| -> )(.*)")
_LOST = re.compile(r"CPU:\d{1,5} \[LOST (\d{1,20}) EVENTS\]")
# inet_sock_set_state's print format (no option changes it; options/fields would lose the IPv6 addresses)
_STATE = re.compile(r"family=(AF_INET6?) protocol=IPPROTO_TCP sport=(\d{1,5}) dport=(\d{1,5}) "
                    r"saddr=([0-9.]{7,15}) daddr=([0-9.]{7,15}) saddrv6=([0-9a-fA-F:.]{2,45}) "
                    r"daddrv6=([0-9a-fA-F:.]{2,45}) oldstate=TCP_([A-Z0-9_]{1,12}) newstate=TCP_([A-Z0-9_]{1,12})$")
STATES = {"ESTABLISHED": 1, "SYN_SENT": 2, "SYN_RECV": 3, "FIN_WAIT1": 4, "FIN_WAIT2": 5, "TIME_WAIT": 6,
          "CLOSE": 7, "CLOSE_WAIT": 8, "LAST_ACK": 9, "LISTEN": 10, "CLOSING": 11, "NEW_SYN_RECV": 12}
TIME_WAIT_FROM = (4, 5, 11)  # a close from these leaves a TIME_WAIT on this host (this end closed first)


def _v4(text):
    parts = text.split(".")
    if len(parts) != 4:
        return None
    try:
        out = bytes(int(part) for part in parts)
    except ValueError:  # a part above 255, or not a number
        return None
    return out


def _v6(text):
    """16 bytes of an IPv6 address as %pI6c prints it; a v4-mapped one as its 4 bytes."""
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed
    return address.packed


_ADDRESSES = {}  # address text -> bytes (or None): a busy sample repeats a few addresses tens of thousands of times
_COMMS = {}  # comm as the trace shows it -> cleaned
CACHE_MAX = 4096


def _cached(cache, text, convert):
    """``convert(text)``, remembered in ``cache`` (emptied when it holds CACHE_MAX)."""
    try:
        return cache[text]
    except KeyError:
        pass
    if len(cache) >= CACHE_MAX:
        cache.clear()
    value = cache[text] = convert(text)
    return value


def _address(text, convert):
    return _cached(_ADDRESSES, text, convert)


def _clean_comm(comm):
    return _cached(_COMMS, comm, lambda value: clean_text(value.strip()))


def parse_state(body):
    """(family 4|6, local bytes, local port, remote bytes, remote port, old state, new state) of an
    inet_sock_set_state body, or None.  A v4-mapped IPv6 address is its IPv4 address (family 4)."""
    match = _STATE.match(body)
    if match is None:
        return None
    family, sport, dport, saddr, daddr, saddr6, daddr6, old, new = match.groups()
    if family == "AF_INET":
        local, remote, fam = _address(saddr, _v4), _address(daddr, _v4), 4
    else:
        local, remote = _address(saddr6, _v6), _address(daddr6, _v6)
        fam = 4 if remote is not None and len(remote) == 4 else 6
    sport, dport = int(sport), int(dport)
    if remote is None or local is None or sport > 65535 or dport > 65535:
        return None
    return fam, local, sport, remote, dport, STATES.get(old, 0), STATES.get(new, 0)


def _last_int(body, name):
    """The integer after the last `` NAME=`` of ``body`` (a comm may hold anything before it), or None."""
    at = body.rfind(" " + name + "=")
    if at < 0:
        return None
    text = body[at + len(name) + 2:].split(" ", 1)[0]
    return int(text) if text.isdigit() and len(text) <= 10 else None


def parse_line(line):
    """One trace line as a tuple, or None for a line that is not one of ours (never raises).

    ("lost", count) | (event, comm, tid, tgid or None, timestamp, data): data is parse_state()'s tuple for
    "inet_sock_set_state"; the child pid for "sched_process_fork"; the exec'd file's base name for
    "sched_process_exec"; True when the whole process ended for "sched_process_exit"; the return value for
    "sys_exit_connect".
    """
    if not isinstance(line, str) or len(line) > MAX_LINE:
        return None
    match = _LINE.match(line)
    if match is None:
        lost = _LOST.search(line)
        return ("lost", int(lost.group(1))) if lost is not None else None
    comm, tid, tgid, stamp, event, separator, body = match.groups()
    if separator == " -> ":  # a syscall's exit prints "sys_NAME -> 0xRETURN"
        event = "sys_exit_connect" if event == "sys_connect" else None
    tgid = int(tgid) if tgid.isdigit() else None
    if event == "inet_sock_set_state":
        data = parse_state(body)
    elif event == "sched_process_fork":
        data = _last_int(body, "child_pid")
    elif event == "sched_process_exec":
        data = _exec_name(body)
    elif event == "sched_process_exit":
        data = _exit_whole(body, int(tid), tgid)
    elif event == "sys_exit_connect":
        data = _return_value(body)
    else:
        return None
    if data is None:
        return None
    if event == "sched_process_exec":
        data = clean_text(data)
    return event, _clean_comm(comm), int(tid), tgid, float(stamp), data


def _exec_name(body):
    if not body.startswith("filename=") or _last_int(body, "old_pid") is None:
        return None
    end = body.rfind(" pid=")
    name = body[len("filename="):end if end > 0 else len(body)]
    return name.rsplit("/", 1)[-1][:15] or None


def _exit_whole(body, tid, tgid):
    if not body.startswith("comm=") or _last_int(body, "prio") is None:
        return None
    at = body.rfind(" group_dead=")
    if at < 0:  # kernels before 6.x: the event of the thread group leader
        return tid == tgid
    return body[at + len(" group_dead="):].strip() in ("true", "(1)", "1")


def _return_value(body):
    text = body.rsplit(" ", 1)[-1]
    if not text.startswith("0x") or len(text) > 18:
        return None
    try:
        value = int(text, 16)
    except ValueError:
        return None
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_lines(text, tally, rest=""):
    """Feed the complete lines of ``rest + text`` to ``tally``; returns what is left after the last newline (at most
    MAX_LINE characters: a longer unfinished line is dropped and counted as bad)."""
    text = rest + text
    end = text.rfind("\n")
    if end < 0:
        if len(text) > MAX_LINE:
            tally.bad_lines += 1
            return ""
        return text
    for line in text[:end].split("\n"):
        if line:
            tally.add(parse_line(line))
    left = text[end + 1:]
    if len(left) > MAX_LINE:
        tally.bad_lines += 1
        return ""
    return left


# ---------------------------------------------------------------- the tally
NEW, TIME_WAIT_ENTERED, FAILED = range(3)  # the counts of one process towards one destination
MAX_CHAIN = 64  # fork parents walked up from one process


def process_key(tgid, generation=0):
    """A process of the trace: its tgid and how many times that tgid was created again during the sample."""
    return tgid | (generation << 32)


def key_pid(key):
    return key & 0xffffffff


class _Process:
    __slots__ = ("comm", "destinations", "failed", "bound")

    def __init__(self, comm):
        self.comm = comm
        self.destinations = {}  # (family, remote bytes, remote port) -> [new, time_wait_entered, failed]
        self.failed = 0  # connect() calls that returned EADDRNOTAVAIL
        self.bound = 0  # connect() calls from an ephemeral port bound before connect()


class TraceTally:
    """What the trace lines of one sample say, per process and per destination (linux_attribution.destination()'s
    keys).

    ``host`` answers, while a process is alive: ``identify(pid)`` -> identity dict (with "start_time") or None,
    ``netns(pid)`` -> what /proc/PID/ns/net links to or None, and has ``own_netns``.  A process's events are
    counted only when it is in ``host.own_netns``: read the first time it has an event to count, else (gone
    already) its fork parent's; an unknown namespace is not counted (``unknown_namespace``).  ``listening``:
    local ports a close of which is a server's, not a client's.  ``ephemeral``: the (low, high) local port range;
    a connect() whose socket already has a local port in it (CLOSE -> SYN_SENT with sport set: the port is
    chosen later in connect() otherwise, and stays 0 under IP_BIND_ADDRESS_NO_PORT) was bound before connect()
    and is counted in ``bound`` (any bound port when None).
    """

    def __init__(self, host=None, listening=(), max_sockets=MAX_SOCKETS, max_processes=MAX_PROCESSES,
                 ephemeral=None):
        self.host = host
        self.listening = frozenset(listening)
        self.ephemeral = ephemeral
        self.max_sockets = max_sockets
        self.max_processes = max_processes
        self.generation = {}  # tgid -> its generation, for a tgid created again by a fork seen
        self.forks = {}  # key -> (parent key, fork timestamp): the processes forked during the sample
        self.ended = set()  # keys of processes known here whose whole exit was seen
        self.names = {}  # key -> comm, as the trace shows it (fork parent, exec, counted event)
        self.processes = {}  # key -> _Process, those with an event counted
        # key -> _Process of a process whose network namespace is another one now: its sockets may still be this
        # namespace's (created before it moved), so its events are kept aside until finish() knows
        self.foreign = {}
        self.pending = {}  # 4-tuple this end closed first (FIN_WAIT1) -> _Process, until its close
        self.admitted = {}  # key -> True (this namespace), False (another), None (unknown)
        self.who = {}  # key -> identity read while the process was alive
        self.pairs = 0
        self.events = self.lost = self.bad_lines = self.other_namespace = self.unknown_namespace = 0
        self.admitted_foreign = 0
        self.unowned_time_wait = {}  # dest -> TIME_WAITs entered by connections closed before the sample
        self.capped = {}  # what -> events a cap dropped

    def key(self, tgid):
        return process_key(tgid, self.generation.get(tgid, 0))

    def _cap(self, what):
        self.capped[what] = self.capped.get(what, 0) + 1

    def add(self, parsed):
        """Count one parse_line() result (None: a line that was not an event of ours)."""
        if parsed is None:
            self.bad_lines += 1
            return
        if parsed[0] == "lost":
            self.lost += parsed[1]
            return
        event, comm, dummy_tid, tgid, stamp, data = parsed
        self.events += 1
        if event == "inet_sock_set_state":
            self._state(comm, tgid, stamp, data)
        elif tgid is None:
            return
        elif event == "sched_process_fork":
            self._fork(comm, tgid, stamp, data)
        elif event == "sched_process_exec":
            self._name(self.key(tgid), data, True)
            proc = self.processes.get(self.key(tgid))
            if proc is not None:
                proc.comm = data
        elif event == "sched_process_exit":
            key = self.key(tgid)
            if data and (key in self.forks or key in self.admitted or len(self.ended) < 2 * self.max_processes):
                self.ended.add(key)  # never read /proc/PID for it again: the pid may be another process's
        elif event == "sys_exit_connect" and data == -EADDRNOTAVAIL:
            proc = self._counted(tgid, comm, stamp)
            if proc is not None:
                proc.failed += 1

    def _name(self, key, comm, replace=False):
        if comm and comm != "<...>" and (replace or key not in self.names):
            if key in self.names or len(self.names) < 2 * self.max_processes:
                self.names[key] = comm

    def _fork(self, comm, tgid, stamp, child):
        parent = self.key(tgid)
        self._name(parent, comm)
        generation = self.generation.get(child, 0)
        old = process_key(child, generation)
        if old in self.forks or old in self.processes or old in self.admitted:
            generation += 1  # the pid of a process known here, taken by a new one: never the same process
            self.generation[child] = generation
        if len(self.forks) >= 2 * self.max_processes:
            self._cap("processes")
            return
        self.forks[process_key(child, generation)] = (parent, stamp)

    def _counted(self, tgid, comm, stamp):
        """The _Process that counts an event of ``tgid``, or None (another or an unknown namespace, a cap)."""
        if tgid is None:
            self.unknown_namespace += 1
            return None
        key = self.key(tgid)
        proc = self.processes.get(key)
        if proc is not None:
            return proc
        state = self.admitted[key] if key in self.admitted else self._resolve(key, stamp)
        if state is None:
            self.unknown_namespace += 1
            return None
        into = self.processes
        if state is False:  # set aside: counted only if the process owns sockets of this namespace (finish())
            self.other_namespace += 1
            into = self.foreign
            if key in into:
                return into[key]
        if len(self.processes) + len(self.foreign) >= self.max_processes:
            self._cap("processes")
            return None
        self._name(key, comm)
        proc = into[key] = _Process(self.names.get(key, comm))
        return proc

    def _resolve(self, key, stamp):
        """Read who ``key`` is and its namespace (else its fork parents'), once; returns the admitted state."""
        chain = []
        state = None
        current, alive_at = key, stamp
        for dummy in range(MAX_CHAIN):
            if current in self.admitted:
                state = self.admitted[current]
                break
            chain.append(current)
            netns = self._read(current, alive_at)
            if netns is not None:
                state = netns == getattr(self.host, "own_netns", None)
                break
            fork = self.forks.get(current)
            if fork is None:
                break
            current, alive_at = fork
        for item in chain:
            self.admitted[item] = state
        return state

    def _read(self, key, alive_at):
        """The namespace of a process while alive (None: gone, ended, or its pid taken by another process)."""
        if self.host is None or key in self.ended:
            return None
        pid = key_pid(key)
        fork = self.forks.get(key)
        who = self.host.identify(pid)
        if who is not None:
            start = who.get("start_time")
            if start is not None and start > (fork[1] if fork is not None else alive_at) + FORK_SLACK:
                return None  # started after the event: another process has the pid now
            if who.get("name") is not None or who.get("cmdline") is not None:
                self.who[key] = who
        return self.host.netns(pid)

    def _state(self, comm, tgid, stamp, data):
        family, local, sport, remote, dport, old, new = data
        dest = (family, remote, dport)
        if new == 2:  # CLOSE -> SYN_SENT, in the task calling connect()
            proc = self._counted(tgid, comm, stamp)
            if proc is not None:
                self._bump(proc, dest, NEW, 1)
                if sport and (self.ephemeral is None or self.ephemeral[0] <= sport <= self.ephemeral[1]):
                    proc.bound += 1  # its port was bound before connect()
        elif new == 7 and old == 2 and sport == 0:  # the connect() got no local port
            proc = self._counted(tgid, comm, stamp)
            if proc is not None:
                self._bump(proc, dest, NEW, -1)
                self._bump(proc, dest, FAILED, 1)
        elif new == 4 and sport not in self.listening:  # ESTABLISHED -> FIN_WAIT1, in the task calling close()
            proc = self._counted(tgid, comm, stamp)
            if proc is not None:
                if len(self.pending) >= self.max_sockets:
                    self._cap("sockets")
                else:
                    self.pending[(family, local, sport, remote, dport)] = proc
        elif new == 7 and old in TIME_WAIT_FROM:  # into TIME_WAIT (any context: softirq, timer)
            proc = self.pending.pop((family, local, sport, remote, dport), None)
            if proc is not None:
                self._bump(proc, dest, TIME_WAIT_ENTERED, 1)
            elif dest in self.unowned_time_wait or len(self.unowned_time_wait) < self.max_sockets:
                self.unowned_time_wait[dest] = self.unowned_time_wait.get(dest, 0) + 1

    def _bump(self, proc, dest, index, count):
        counts = proc.destinations.get(dest)
        if counts is None:
            if self.pairs >= self.max_sockets:
                self._cap("destinations")
                return
            self.pairs += 1
            counts = proc.destinations[dest] = [0, 0, 0]
        counts[index] += count

    def fold_target(self, key):
        """The process ``key``'s counts go to: itself, or (forked and ended during the sample) its nearest fork
        ancestor that was not."""
        current = key
        for dummy in range(MAX_CHAIN):
            fork = self.forks.get(current)
            if fork is None or current not in self.ended:
                return current
            current = fork[0]
        return current

    def _fold_targets(self, counted):
        """{key: the key its counts go to} for the processes ``counted``: fold_target(), and also a child forked
        during the sample that still runs at its end when its parent's group already holds ended children of
        the same command (the loop's request in flight when the sample ended)."""
        targets = dict((key, self.fold_target(key)) for key in counted)
        series = set((target, counted[key].comm) for key, target in targets.items() if target != key)
        for key, target in targets.items():
            fork = self.forks.get(key)
            if target == key and fork is not None and key not in self.ended:
                parent = self.fold_target(fork[0])
                if (parent, counted[key].comm) in series:
                    targets[key] = parent
        return targets

    def finish(self, owners=()):
        """{key: {"pid", "ended", "who" (identity or None), "comm", "destinations" {dest: [new, time_wait_entered,
        failed]}, "failed", "bound", "spawned" ({"command", "count"} or None)}}, the short-lived children folded.

        ``owners``: the pids whose fd tables hold sockets of this namespace now (the final dump's owners).  A
        process that moved to another network namespace is counted when it is one of them and still runs: its
        sockets, not its current namespace, say where its connections are (``admitted_foreign``)."""
        out = {}
        children = {}
        owners = set(owners)
        counted = dict(self.processes)
        for key, proc in self.foreign.items():
            if key not in self.ended and key_pid(key) in owners:
                counted[key] = proc
        self.admitted_foreign = len(counted) - len(self.processes)
        targets = self._fold_targets(counted)
        for key, proc in counted.items():
            target = targets[key]
            entry = out.get(target)
            if entry is None:
                entry = out[target] = {"pid": key_pid(target), "ended": target in self.ended,
                                       "who": self.who.get(target), "comm": self.names.get(target),
                                       "destinations": {}, "failed": 0, "bound": 0, "spawned": None}
            if target != key:
                commands = children.setdefault(target, {})
                commands[proc.comm] = commands.get(proc.comm, 0) + 1
            elif proc.comm:
                entry["comm"] = proc.comm
            entry["failed"] += proc.failed
            entry["bound"] += proc.bound
            for dest, counts in proc.destinations.items():
                have = entry["destinations"].setdefault(dest, [0, 0, 0])
                for index in (NEW, TIME_WAIT_ENTERED, FAILED):
                    have[index] += counts[index]
        for target, commands in children.items():
            command = sorted(commands.items(), key=lambda item: (-item[1], str(item[0])))[0][0]
            out[target]["spawned"] = {"command": command, "count": sum(commands.values())}
        for entry in out.values():
            for counts in entry["destinations"].values():
                counts[NEW] = max(0, counts[NEW])
        return out
