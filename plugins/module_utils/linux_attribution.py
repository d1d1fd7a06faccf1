# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which process opens the connections: attribution of the socket table to processes, pure.

A TIME_WAIT socket has no owner (no file, inode 0), and a client whose
connections live a few milliseconds is rarely caught holding one.  So the
sockets are followed by their kernel cookie, which a socket keeps when it
enters TIME_WAIT:

- during ``sample_seconds`` the live sockets are dumped every few
  milliseconds (``observe_live``; TIME_WAIT is not asked for, so each dump
  stays small) and each new cookie is given the pid whose /proc/PID/fd holds
  its inode (``resolve``);
- a final dump of the whole table (``observe_final``) sees each TIME_WAIT
  socket with the milliseconds left of its 60 s: those that entered
  TIME_WAIT during the sample are new connections, counted whether or not a
  live dump caught them.  A cookie seen alive gives its pid *exactly*;
- what no dump caught alive is *inferred*: a destination's remaining new
  connections and TIME_WAIT sockets are shared among the processes seen
  opening connections to it during the sample, in proportion to what each
  was seen opening (largest remainders, so the counts add up).  A process
  never seen opening a connection to it gets none (a pooled client is not
  blamed for its neighbour's churn); with no opener seen they stay
  ``unattributed``.  Without a sample, TIME_WAIT is given to a destination's
  only live owner, if it has exactly one.

A pid in the result is always one whose /proc/PID/fd held a socket: nothing
is invented.  Host access is the caller's, all of it through LinuxHost (its
sock_diag dumps, and the /proc/PID reads a linux_processes.ProcessTable asks of it).
"""

from __future__ import annotations

from ansible_collections.tcpstack.tuning.plugins.module_utils.socket_table import AF_INET, CLOSE, TIME_WAIT
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import (
    DestinationCounts,
    Unattributed,
    process_record,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_rules import time_wait_heir, unmap_pair

TIME_WAIT_MS = 60000
MAX_SOCKETS = 200000  # sockets followed during a sample (seen, bound, pending each): past it, new ones are counted
# A socket followed by its cookie (``Attribution.seen``): a list, one per socket on the sampling's hot path,
# read through these indexes.
DEST, INODE, PID, ALIVE, CLOSED = range(5)
# A bound, unconnected socket (``Attribution.bound``): [inode, pid].
BOUND_INODE, BOUND_PID = range(2)


def destination(family, key):
    """(4|6, remote address bytes, remote port) of a netlink key (remote port + local + remote address)."""
    port = (key[0] << 8) | key[1]
    if family == AF_INET:
        return (4, key[18:22], port)
    pair = unmap_pair(key[2:18], key[18:34])
    if pair is not None:
        return (4, pair[1], port)
    return (6, key[18:34], port)


class _Counts:
    """One process's sockets towards one destination in the final dump: live (in use), established, in
    TIME_WAIT, opened during the sample."""

    __slots__ = ("live", "established", "time_wait", "new")

    def __init__(self):
        self.live = self.established = self.time_wait = self.new = 0


_NOBODY = _Counts()


def share(total, weights):
    """``total`` split in proportion to ``weights`` {key: weight > 0} by largest remainders: sums to ``total``."""
    if total <= 0 or not weights:
        return {}
    whole = sum(weights.values())
    if whole <= 0:
        return {}
    out = {}
    remainders = []
    given = 0
    for key, weight in weights.items():
        exact = total * weight / float(whole)
        out[key] = int(exact)
        given += out[key]
        remainders.append((exact - int(exact), weight, key))
    remainders.sort(key=lambda item: (-item[0], -item[1], str(item[2])))
    for index in range(total - given):
        out[remainders[index % len(remainders)][2]] += 1
    return dict((key, value) for key, value in out.items() if value)


class Attribution:
    """Observations of one sample (or one snapshot) and what they attribute.

    ``seen``: cookie -> [destination, inode, pid or None, alive at the first
    dump, closed into TIME_WAIT during the sample].  ``bound``: cookie ->
    [inode, pid] of sockets bound to an ephemeral port and not connected.
    """

    def __init__(self, max_sockets=MAX_SOCKETS):
        self.max_sockets = max_sockets
        self.capped = {}  # map -> sockets a cap left unfollowed (seen, bound, pending)
        self.seen = {}
        self.bound = {}
        self.pending = []  # [record, index of its inode, index of its pid, tries] still without an owner
        self.started = None  # time.monotonic() of the first live dump
        self.dumps = 0
        self.window_ms = None  # milliseconds from the first live dump to the final one; None: no sample
        self._first = True
        # final dump: {destination: {pid or None: _Counts}}
        self.table = {}
        self.bound_now = {}

    # ------------------------------------------------------------ sampling
    def observe_live(self, family, state, key, cookie, expires, uid, inode):
        """A socket of a live dump (netlink consumer: socket_table.tally_netlink ``observe``)."""
        if state == TIME_WAIT:
            return
        if state == CLOSE:
            if key[0] == 0 and key[1] == 0 and cookie not in self.bound:
                if self._full("bound", self.bound):
                    return
                record = self.bound[cookie] = [inode, None]
                if inode and not self._full("pending", self.pending):
                    self.pending.append([record, BOUND_INODE, BOUND_PID, 0])
            return
        if cookie not in self.seen:
            if self._full("seen", self.seen):
                return
            record = self.seen[cookie] = [destination(family, key), inode, None, self._first, False]
            if inode and not self._full("pending", self.pending):
                self.pending.append([record, INODE, PID, 0])

    def _full(self, name, store):
        """Whether ``store`` holds max_sockets already (then the socket is counted in ``capped[name]``)."""
        if len(store) < self.max_sockets:
            return False
        self.capped[name] = self.capped.get(name, 0) + 1
        return True

    def end_dump(self):
        """Call after each live dump (both address families)."""
        self.dumps += 1
        self._first = False

    def resolve(self, owner, attempts=3, count=True):
        """Give owners (``owner(inode)`` -> pid or None) to the sockets seen without one; returns how many are left.

        A socket still without an owner after ``attempts`` calls is given up
        (its process closed it, or cannot be read): each call costs only the
        sockets of the last few dumps.
        """
        keep = []
        for item in self.pending:
            record, inode_at, pid_at, tries = item
            if record[pid_at] is not None:
                continue
            pid = owner(record[inode_at])
            if pid is not None:
                record[pid_at] = pid
                continue
            item[3] = tries + 1 if count else tries
            if item[3] < attempts:
                keep.append(item)
        self.pending = keep
        return len(keep)

    # ------------------------------------------------------------ the final dump
    def _observe_bound(self, owner, cookie, inode):
        pid = owner(inode) if inode else None
        self.bound_now[pid] = self.bound_now.get(pid, 0) + 1
        record = self.bound.get(cookie)
        if record is None:
            if not self._full("bound", self.bound):
                self.bound[cookie] = [inode, pid]
        elif record[BOUND_PID] is None:
            record[BOUND_PID] = pid

    def observer(self, owner):
        """The ``observe`` callable for the final, whole-table dump; ``owner(inode)`` -> pid or None."""
        seen = self.seen
        bound = self.bound
        table = self.table
        window = self.window_ms

        def observe(family, state, key, cookie, expires, uid, inode):
            if state == CLOSE:
                if key[0] == 0 and key[1] == 0:
                    self._observe_bound(owner, cookie, inode)
                return
            dest = destination(family, key)
            record = seen.get(cookie)
            if state == TIME_WAIT:
                pid = record[PID] if record is not None else None
                if record is None and cookie in bound:  # bound, then connected and closed between two dumps
                    pid = bound[cookie][BOUND_PID]
                counts = _counts(table, dest, pid)
                counts.time_wait += 1
                if window is not None and TIME_WAIT_MS - expires <= window and (record is None or not record[ALIVE]):
                    counts.new += 1
                    if record is not None:
                        record[CLOSED] = True
                return
            pid = owner(inode) if inode else None
            counts = _counts(table, dest, pid)
            counts.live += 1
            if state == 1:
                counts.established += 1
            if record is not None:
                if record[PID] is None:
                    record[PID] = pid
            elif window is not None:  # not alive at the first live dump (it saw them all): opened since
                counts.new += 1

        return observe

    def add_time_wait(self, tuples):
        """Count the TIME_WAIT sockets of a dump that did not observe them (no sample: no cookie to follow),
        from socket_table.Tally.tuples(), as sockets without an owner."""
        for (family, dummy_local, remote, port), (dummy_in_use, time_wait) in tuples.items():
            if time_wait:
                _counts(self.table, (family, remote, port), None).time_wait += time_wait

    def owners(self):
        """The pids the final dump found holding live sockets (their fd tables own sockets of this namespace)."""
        return set(pid for by_pid in self.table.values() for pid, counts in by_pid.items()
                   if pid is not None and counts.live)

    def give_time_wait(self, dest, owner, count):
        """Give ``count`` of the ownerless TIME_WAIT sockets towards ``dest`` of the final dump to ``owner`` (known
        exactly: the trace saw it close them first); returns how many it got."""
        by_pid = self.table.get(dest)
        nobody = by_pid.get(None) if by_pid is not None else None
        given = min(count, nobody.time_wait) if nobody is not None else 0
        if given > 0:
            nobody.time_wait -= given
            _counts(self.table, dest, owner).time_wait += given
        return given

    def finish(self):
        """({pid: ProcessRecord (pid, destinations, bound_inactive, bound_inactive_seen)},
        {dest: Unattributed}).

        new_connections fields are None without a sample.
        """
        sampled = self.window_ms is not None
        if sampled:  # opened during the sample and not (or not yet) in TIME_WAIT
            for record in self.seen.values():
                if not record[ALIVE] and not record[CLOSED]:
                    _counts(self.table, record[DEST], record[PID]).new += 1
        processes = {}
        unattributed = {}
        for dest, by_pid in self.table.items():
            left = _share_destination(processes, dest, by_pid, sampled)
            if left is not None:
                unattributed[dest] = left
        self._add_bound(processes)
        return processes, unattributed

    def _add_bound(self, processes):
        seen_bound = {}
        for dummy_inode, pid in self.bound.values():
            if pid is not None:
                seen_bound[pid] = seen_bound.get(pid, 0) + 1
        for pid in set(seen_bound) | set(pid for pid in self.bound_now if pid is not None):
            entry = _process(processes, pid)
            entry.bound_inactive = self.bound_now.get(pid, 0)
            entry.bound_inactive_seen = seen_bound.get(pid, 0)


def _share_destination(processes, dest, by_pid, sampled):
    """Give one destination's counts to its processes, sharing out what no owner was seen for; returns what is
    left unattributed (None: nothing)."""
    openers = dict((pid, counts.new) for pid, counts in by_pid.items() if pid is not None and counts.new > 0)
    nobody = by_pid.get(None, _NOBODY)
    if sampled:
        tw_weights = openers
    else:
        heir = time_wait_heir([pid for pid, counts in by_pid.items() if pid is not None and counts.live > 0])
        tw_weights = {heir: 1} if heir is not None else {}
    tw_shared = share(nobody.time_wait, tw_weights)
    new_shared = share(nobody.new, openers) if sampled else {}
    for pid, counts in by_pid.items():
        if pid is not None:
            _record(processes, pid, dest, counts, tw_shared.get(pid, 0), new_shared.get(pid, 0), sampled)
    for pid in set(tw_shared) | set(new_shared):
        if pid not in by_pid:
            _record(processes, pid, dest, _NOBODY, tw_shared.get(pid, 0), new_shared.get(pid, 0), sampled)
    left_tw = nobody.time_wait - sum(tw_shared.values())
    left_new = nobody.new - sum(new_shared.values())
    if nobody.live or left_tw or left_new:
        return Unattributed(in_use=nobody.live + left_tw, time_wait=left_tw,
                            new_connections=left_new if sampled else None)
    return None


def _counts(table, dest, pid):
    by_pid = table.get(dest)
    if by_pid is None:
        by_pid = table[dest] = {}
    counts = by_pid.get(pid)
    if counts is None:
        counts = by_pid[pid] = _Counts()
    return counts


def _process(processes, pid):
    entry = processes.get(pid)
    if entry is None:
        entry = processes[pid] = process_record(pid)
    return entry


def _record(processes, pid, dest, counts, tw_inferred, new_inferred, sampled):
    _process(processes, pid).destinations[dest] = DestinationCounts(
        in_use=counts.live + counts.time_wait + tw_inferred,
        established=counts.established,
        time_wait=counts.time_wait + tw_inferred,
        time_wait_inferred=tw_inferred,
        new_connections=(counts.new + new_inferred) if sampled else None,
        new_connections_inferred=new_inferred if sampled else None,
    )
