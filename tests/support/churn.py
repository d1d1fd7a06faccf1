"""Bounded TCP traffic: the one churn program of the tests, the molecule scenario, the benchmarks and the demo.

A single standard-library file (Python 3.9+) with no import from this repository: the molecule scenario copies it
into a container (ansible.builtin.script); everything else runs it by its path (tests.support.traffic.program)
inside network namespaces it made, or as ``python3 -m tests.support.churn``.  Every loop is bounded in count and
time.  A client prints one JSON line of counts when it is done; a server or a holder prints one line when it is
ready ("listening", "running", "ready ...").

  serve ADDRESSES PORTS SECONDS [--procs N] [--echo]
      Listen on every ADDRESS:PORT (comma-separated lists); accept, read until the client's FIN, then close: the
      client closes first and keeps its port in TIME_WAIT, as a busy HTTP client does.  --echo sends back every
      byte read (keep-alive clients).  --procs N: N processes share the listeners (SO_REUSEPORT).  Prints
      "listening", then serves for SECONDS.

  connect ADDRESSES PORT --seconds S [--attempts N] [--made N] [--rate R] [--procs N] [--exchange] [--hold-ms MS]
          [--stop-after N] [--stop-after-failures N] [--window-from S] [--grace S] [--serve N] [--knock PORT]
          [--pool N] [--linger S] [--ready]
      The churn: connect() and close(), the client first, round robin over ADDRESSES.  Bounded by --attempts (at
      most that many connect()s), --made (stop once that many were made), --seconds, --stop-after (stop at the
      Nth EADDRNOTAVAIL), --stop-after-failures (at the Nth failure of any kind).  --rate R paces the attempts
      (attempt i is due at start + i/R; at most R * S of them, stopping S + --grace seconds after the start);
      without it they go as fast as they can for at most S seconds.  --procs N: N forked processes share the rate,
      each offset by 1/N of a step.  --exchange sends a byte and reads it back on each connection, --hold-ms keeps
      it open that long in all.  --serve N: N forked processes of this program also serve the destinations (as
      serve does, until the client is done).  --knock PORT: every tenth attempt also starts a non-blocking
      connect() to a listener on the first address's PORT with backlog 0 that never accepts (its SYNs are dropped:
      ListenOverflows), at most 2,000 kept pending.  --pool N: N keep-alive connections opened once, each attempt
      a one-byte request on one of them instead of a new connection.  --linger S: wait S seconds before the report
      (the server closes its side).  --ready: print "running" first (with --pool, once the pool is open).

  bind-first ADDRESS PORT --local LOCAL --batch N --hold S --seconds S
      A client that binds before it connects: each round binds N sockets to (LOCAL, 0), so each takes an
      ephemeral port for every destination, holds them S seconds unconnected, then connects and closes them.
      Prints "running", then one JSON line of counts.

  self-churn ADDRESSES PORTS CONNECTIONS SECONDS
      One process is both ends of a loopback churn, with no context switch per connection: it listens on every
      ADDRESS:PORT, then round robin connect()s to each, accept()s the connection itself and closes the client
      end first (its port stays in TIME_WAIT).  A failed connect() (EADDRNOTAVAIL when a tuple's ports are all in
      TIME_WAIT) waits 1 ms.  Measured (2 vCPUs, Linux 6.18): about 29,000 connections per second from one such
      process, where 4 client processes and 16 blocking server processes together reached about 8,700.  Prints
      "listening", then one JSON line of counts.

  hold ADDRESSES PORTS CONNECTIONS SECONDS [--client-procs N --server-procs N]
      CONNECTIONS loopback connections opened once, round robin over ADDRESSES x PORTS, both ends held ESTABLISHED
      and idle.  By default one process holds both ends (2 descriptors per connection): it raises its soft
      RLIMIT_NOFILE to fit, within its hard limit (never above: fewer connections are opened if the hard limit is
      lower), and opens them in batches of at most 1,024.  With --client-procs/--server-procs the connections are
      shared out over that many client processes, and the server processes accept them, one port each (so the
      ports are held by many processes).  Prints "ready N SECONDS_TO_OPEN [ERROR]", then holds them until
      SIGTERM, SIGKILL, the end of its stdin when --stdin is given, or SECONDS.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
import signal
import socket
import sys
import threading
import time

BACKLOG = 4096
CONNECT_TIMEOUT = 2.0
KNOCK_EVERY, KNOCKS_PENDING = 10, 2000
HOLD_BATCH = 1024


def listener(address, port, backlog=BACKLOG, reuse_port=False):
    """A listening TCP socket on (address, port), SO_REUSEADDR (and SO_REUSEPORT when asked)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address, port))
    sock.listen(backlog)
    return sock


def listeners(addresses, ports, reuse_port=False):
    return [listener(address, port, reuse_port=reuse_port) for address in addresses for port in ports]


def fork_workers(count):
    """Fork ``count`` - 1 children: (index, pids), index 0 and the children's pids in the calling process, the
    child's index (1..) and [] in each child."""
    pids = []
    for index in range(1, count):
        pid = os.fork()
        if pid == 0:
            return index, []
        pids.append(pid)
    return 0, pids


def reap(pids, sig=signal.SIGTERM):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass


def emit(report):
    print(json.dumps(report), flush=True)


# ---------------------------------------------------------------- serve
def serve_until(socks, deadline, echo=False):
    """Accept on ``socks`` until ``deadline``; read each connection until the client closes it (echoing what it
    sends with ``echo``), then close it."""
    sel = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, "listen")
    while time.monotonic() < deadline:
        for key, dummy in sel.select(timeout=0.5):
            if key.data == "listen":
                _accept_some(sel, key.fileobj)
            else:
                _serve_one(sel, key.fileobj, echo)
    sel.close()


def _accept_some(sel, sock):
    for dummy in range(256):
        try:
            conn, dummy = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset before it was accepted (ECONNABORTED)
            continue
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ, "conn")


def _serve_one(sel, conn, echo):
    try:
        data = conn.recv(65536)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        data = b""
    if data and echo:
        try:
            conn.sendall(data)
        except OSError:
            data = b""
    if not data:
        sel.unregister(conn)
        conn.close()


def serve(args):
    socks = listeners(args.addresses, args.ports, reuse_port=args.procs > 1)
    index, pids = fork_workers(args.procs)
    if index == 0:
        print("listening", flush=True)
    serve_until(socks, time.monotonic() + args.seconds, args.echo)
    if index:
        os._exit(0)  # pylint: disable=protected-access
    for pid in pids:
        os.waitpid(pid, 0)


# ---------------------------------------------------------------- connect
class Counts:
    """What one client process did: outcomes, their errors, its pace and how long connections lived."""

    KEYS = ("made", "eaddrnotavail", "other", "window_made", "window_eaddrnotavail", "window_other", "planned",
            "under_10ms")

    def __init__(self, planned):
        self.counts = dict.fromkeys(self.KEYS, 0)
        self.counts["planned"] = planned
        self.errors = {}
        self.max_lag = self.connect_total = self.connect_max = self.longest = 0.0
        self.lag_at = {}

    def outcome(self, exc):
        if exc is None:
            return "made"
        if exc.errno == errno.EADDRNOTAVAIL:
            return "eaddrnotavail"
        self.errors[str(exc)] = self.errors.get(str(exc), 0) + 1
        return "other"

    def add(self, outcome, in_window):
        self.counts[outcome] += 1
        if in_window:
            self.counts["window_" + outcome] += 1

    def failures(self):
        return self.counts["eaddrnotavail"] + self.counts["other"]

    def part(self, seconds):
        return dict(self.counts, errors=self.errors, seconds=seconds, max_lag=self.max_lag,
                    connect_total=self.connect_total, connect_max=self.connect_max, longest=self.longest,
                    lag_at=self.lag_at)


def attempt_new(target, args, counts):
    """One connect() (with --exchange a byte there and back, held --hold-ms in all), closed by us first."""
    opened = time.monotonic()
    sock = socket.socket()
    sock.settimeout(CONNECT_TIMEOUT)
    exc = None
    try:
        try:
            sock.connect(target)
        finally:
            took = time.monotonic() - opened
            counts.connect_total += took
            counts.connect_max = max(counts.connect_max, took)
        if args.exchange:
            sock.sendall(b"x")
            sock.recv(1)
        left = args.hold_ms / 1000.0 - (time.monotonic() - opened)
        if left > 0:
            time.sleep(left)
    except OSError as error:
        exc = error
    finally:
        sock.close()
    lived = time.monotonic() - opened
    counts.longest = max(counts.longest, lived)
    counts.counts["under_10ms"] += lived < 0.010
    return counts.outcome(exc)


def attempt_pooled(sock, counts):
    """One one-byte request on a keep-alive connection of the pool."""
    try:
        sock.sendall(b"x")
        sock.recv(1)
        return "made"
    except OSError as exc:
        return counts.outcome(exc)


def knock(target, pending):
    """A non-blocking connect() to the listener that never accepts; kept pending (at most KNOCKS_PENDING)."""
    if len(pending) < KNOCKS_PENDING:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(target)
        pending.append(sock)


def stop_now(args, counts, now, start):
    if args.made and counts.counts["made"] >= args.made:
        return True
    if args.stop_after and counts.counts["eaddrnotavail"] >= args.stop_after:
        return True
    if args.stop_after_failures and counts.failures() >= args.stop_after_failures:
        return True
    limit = args.seconds + args.grace if args.rate else args.seconds
    return now - start > limit


def planned(args):
    """How many attempts one client process makes at the most."""
    most = int(args.rate * args.seconds / args.procs) if args.rate else args.attempts
    return min(most, args.attempts) if args.attempts else most


def run_client(args, index, start, pool):
    """The attempts of client process ``index`` (of --procs); returns its Counts."""
    targets = [(address, args.port) for address in args.addresses]
    knock_target, pending = (args.addresses[0], args.knock), []
    counts = Counts(planned(args))
    step = args.procs / args.rate if args.rate else 0.0
    for i in range(counts.counts["planned"]):
        now = time.monotonic()
        due = start + (i + index / args.procs) * step if args.rate else now
        if stop_now(args, counts, now, start):
            break
        if due > now:
            time.sleep(due - now)
        else:
            counts.max_lag = max(counts.max_lag, now - due)
        mark = int((due - start) // 10) * 10
        counts.lag_at.setdefault(mark, round(max(0.0, now - due), 3))
        if pool:
            outcome = attempt_pooled(pool[i % len(pool)], counts)
        else:
            outcome = attempt_new(targets[i % len(targets)], args, counts)
        counts.add(outcome, due - start >= args.window_from)
        if args.knock and i % KNOCK_EVERY == KNOCK_EVERY - 1:
            knock(knock_target, pending)
    return counts


def merge(parts, args, pool):
    """One report from the parts of every client process."""
    out = {"pid": os.getpid(), "procs": args.procs, "rate_asked": args.rate}
    for key in Counts.KEYS:
        out[key] = sum(part[key] for part in parts)
    tried = max(1, sum(part["made"] + part["eaddrnotavail"] + part["other"] for part in parts))
    seconds = max(part["seconds"] for part in parts)
    errors = {}
    for part in parts:
        for text, count in part["errors"].items():
            errors[text] = errors.get(text, 0) + count
    out.update(failed=out["eaddrnotavail"] + out["other"], errors=errors, seconds=round(seconds, 3),
               rate=round(out["made"] / seconds, 2) if seconds else 0.0,
               max_lag=max(part["max_lag"] for part in parts),
               connect_ms_mean=round(1000.0 * sum(part["connect_total"] for part in parts) / tried, 3),
               connect_ms_max=round(1000.0 * max(part["connect_max"] for part in parts), 1),
               longest_ms=round(1000.0 * max(part["longest"] for part in parts), 2),
               lag_at=parts[0]["lag_at"])
    if pool:
        out.update(requests=out["made"], connections=len(pool))
    return out


def client_parts(args, start, pool):
    """Run the client processes (this one and --procs - 1 forked); the part of each, as plain dicts."""
    if args.procs == 1:
        counts = run_client(args, 0, start, pool)
        return [counts.part(time.monotonic() - start)]
    pipes = []
    for index in range(args.procs):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            counts = run_client(args, index, start, pool)
            os.write(write_end, json.dumps(counts.part(time.monotonic() - start)).encode())
            os._exit(0)  # pylint: disable=protected-access
        os.close(write_end)
        pipes.append((pid, read_end))
    parts = []
    for pid, read_end in pipes:
        data = b""
        chunk = os.read(read_end, 65536)
        while chunk:
            data += chunk
            chunk = os.read(read_end, 65536)
        os.waitpid(pid, 0)
        parts.append(json.loads(data))
    return parts


def connect(args):
    servers = []
    if args.serve:
        socks = listeners(args.addresses, [args.port])
        index, servers = fork_workers(args.serve + 1)
        if index:
            serve_until(socks, time.monotonic() + args.seconds + args.grace + 10)
            os._exit(0)  # pylint: disable=protected-access
        for sock in socks:
            sock.close()
    full = None
    if args.knock:
        full = listener(args.addresses[0], args.knock, backlog=0)  # never accepts: held open until the end
    pool = [socket.create_connection((args.addresses[i % len(args.addresses)], args.port), timeout=CONNECT_TIMEOUT)
            for i in range(args.pool)]
    if args.ready:
        print("running", flush=True)
    start = time.monotonic() + (0.5 if args.procs > 1 else 0.0)  # the forked clients start together
    try:
        parts = client_parts(args, start, pool)
    finally:
        for sock in pool:
            sock.close()
        if args.linger:
            time.sleep(args.linger)
        reap(servers)
    if full is not None:
        full.close()
    emit(merge(parts, args, pool))


# ---------------------------------------------------------------- bind-first
def bind_first(args):
    print("running", flush=True)
    started = time.monotonic()
    bound = made = failed = 0
    for dummy in range(int(args.seconds / args.hold) + 1):
        if time.monotonic() - started >= args.seconds:
            break
        socks = []
        for dummy2 in range(args.batch):
            sock = socket.socket()
            sock.bind((args.local, 0))
            socks.append(sock)
            bound += 1
        time.sleep(args.hold)
        for sock in socks:
            sock.settimeout(CONNECT_TIMEOUT)
            try:
                sock.connect((args.address, args.port))
                made += 1
            except OSError:
                failed += 1
            sock.close()
    emit({"pid": os.getpid(), "bound": bound, "made": made, "failed": failed,
          "seconds": round(time.monotonic() - started, 3)})


# ---------------------------------------------------------------- self-churn
def self_churn(args):
    pairs = []
    for address in args.addresses:
        for port in args.ports:
            sock = listener(address, port)
            sock.settimeout(5.0)
            pairs.append(((address, port), sock))
    print("listening", flush=True)
    made = failed = 0
    errors = {}
    started = time.monotonic()
    deadline = started + args.seconds
    while made < args.connections and time.monotonic() < deadline:
        for target, sock in pairs:
            client = socket.socket()
            try:
                client.connect(target)
                server, dummy = sock.accept()
            except OSError as exc:
                failed += 1
                errors[str(exc)] = errors.get(str(exc), 0) + 1
                client.close()
                time.sleep(0.001)
                continue
            client.close()
            server.close()
            made += 1
    emit({"pid": os.getpid(), "made": made, "failed": failed, "errors": errors,
          "seconds": round(time.monotonic() - started, 2)})


# ---------------------------------------------------------------- hold
def fit_descriptors(count, per_connection):
    """Raise the soft RLIMIT_NOFILE for ``count`` connections, within the hard limit; the count that fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        count = max(0, min(count, (hard - 64) // per_connection))
    if soft != resource.RLIM_INFINITY and soft < per_connection * count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (per_connection * count + 64, hard))
    return count


def hold_here(targets, count, deadline):
    """Open ``count`` connections round robin over ``targets`` ((address, port), listener) and accept each here:
    (the sockets held, the error that stopped it or None)."""
    held, error = [], None
    while len(held) < 2 * count and error is None and time.monotonic() < deadline:
        clients = []
        for dummy in range(min(HOLD_BATCH, count - len(held) // 2)):
            target, sock = targets[(len(held) // 2 + len(clients)) % len(targets)]
            client = socket.socket()
            try:
                client.connect(target)
            except OSError as exc:
                client.close()
                error = "connect: %s" % exc
                break
            clients.append((client, sock))
        for client, sock in clients:
            try:
                server, dummy = sock.accept()
            except OSError as exc:
                error = error or "accept: %s" % exc
                client.close()
                continue
            held.extend((client, server))
    return held, error


def hold_apart(args, targets, deadline):
    """--client-procs processes open the connections, --server-procs processes accept and hold them (server j
    the ports[j % ports] listeners, client k port k % ports); returns (connections, child pids)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    children = []
    for index in range(args.server_procs):
        pid = os.fork()
        if pid == 0:
            port = args.ports[index % len(args.ports)]
            serve_until([sock for (dummy, p), sock in targets if p == port], deadline)
            os._exit(0)  # pylint: disable=protected-access
        children.append(pid)
    per_process = args.connections // args.client_procs
    ready_r, ready_w = os.pipe()
    for index in range(args.client_procs):
        pid = os.fork()
        if pid == 0:
            port = args.ports[index % len(args.ports)]
            mine = [socket.create_connection((args.addresses[n % len(args.addresses)], port))
                    for n in range(per_process)]
            os.write(ready_w, b".")
            time.sleep(max(0.0, deadline - time.monotonic()))
            for sock in mine:
                sock.close()
            os._exit(0)  # pylint: disable=protected-access
        children.append(pid)
    got = 0
    while got < args.client_procs:
        got += len(os.read(ready_r, args.client_procs))
    return per_process * args.client_procs, children


def hold(args):
    started = time.monotonic()
    deadline = started + args.seconds
    targets = [((address, port), listener(address, port)) for address in args.addresses for port in args.ports]
    children, error = [], None
    if args.client_procs:
        count, children = hold_apart(args, targets, deadline)
    else:
        for dummy, sock in targets:
            sock.settimeout(5.0)
        held, error = hold_here(targets, fit_descriptors(args.connections, 2), deadline)
        count = len(held) // 2
    print(("ready %d %.2f %s" % (count, time.monotonic() - started, error or "")).strip(), flush=True)

    def stop(*dummy):
        reap(children, signal.SIGKILL)
        os._exit(0)  # pylint: disable=protected-access

    signal.signal(signal.SIGTERM, stop)
    if args.stdin:
        threading.Thread(target=lambda: (sys.stdin.read(), os.kill(os.getpid(), signal.SIGTERM)), daemon=True).start()
    time.sleep(max(0.0, deadline - time.monotonic()))
    stop()


# ---------------------------------------------------------------- command line
def _list(kind):
    return lambda text: [kind(item) for item in text.split(",")]


def parser():
    top = argparse.ArgumentParser(prog="churn.py", description=__doc__.split("\n\n", maxsplit=1)[0])
    modes = top.add_subparsers(dest="mode", required=True)
    one = modes.add_parser("serve")
    one.add_argument("addresses", type=_list(str))
    one.add_argument("ports", type=_list(int))
    one.add_argument("seconds", type=float)
    one.add_argument("--procs", type=int, default=1)
    one.add_argument("--echo", action="store_true")
    one = modes.add_parser("connect")
    one.add_argument("addresses", type=_list(str))
    one.add_argument("port", type=int)
    one.add_argument("--seconds", type=float, required=True)
    for name, kind, default in (("attempts", int, 0), ("made", int, 0), ("rate", float, 0.0), ("procs", int, 1),
                                ("hold-ms", float, 0.0), ("stop-after", int, 0), ("stop-after-failures", int, 0),
                                ("window-from", float, 0.0), ("grace", float, 15.0), ("serve", int, 0),
                                ("knock", int, 0), ("pool", int, 0), ("linger", float, 0.0)):
        one.add_argument("--" + name, type=kind, default=default)
    one.add_argument("--exchange", action="store_true")
    one.add_argument("--ready", action="store_true")
    one = modes.add_parser("bind-first")
    one.add_argument("address")
    one.add_argument("port", type=int)
    one.add_argument("--local", required=True)
    one.add_argument("--batch", type=int, required=True)
    one.add_argument("--hold", type=float, required=True)
    one.add_argument("--seconds", type=float, required=True)
    one = modes.add_parser("self-churn")
    one.add_argument("addresses", type=_list(str))
    one.add_argument("ports", type=_list(int))
    one.add_argument("connections", type=int)
    one.add_argument("seconds", type=float)
    one = modes.add_parser("hold")
    one.add_argument("addresses", type=_list(str))
    one.add_argument("ports", type=_list(int))
    one.add_argument("connections", type=int)
    one.add_argument("seconds", type=float)
    one.add_argument("--client-procs", type=int, default=0)
    one.add_argument("--server-procs", type=int, default=0)
    one.add_argument("--stdin", action="store_true")
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    if args.mode == "connect" and not (args.attempts or args.rate):
        parser().error("connect needs --attempts or --rate: every loop is bounded in count")
    {"serve": serve, "connect": connect, "bind-first": bind_first, "self-churn": self_churn,
     "hold": hold}[args.mode](args)


if __name__ == "__main__":
    main()
