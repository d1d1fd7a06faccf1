"""Bounded test traffic, run with ``python3 -c SCRIPT ARGS`` inside network namespaces the caller made
(Sandbox.start, ClientServer.serve, Sandbox.exec).

Shared by the integration tests and the demo; every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import time


def final_report(child, seconds):
    """The JSON line a client script prints when it is done (STEADY, CHURN, ...), read from ``child`` (a Popen
    with text stdout) for at most ``seconds``; None when it printed none (it failed, or ran out of time)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if line.strip().startswith("{"):
            return json.loads(line)
        if not line and child.poll() is not None:
            break
    return None


# SERVER ADDRESS PORT SECONDS: accept, wait for the client's FIN, close. The client closes first and so
# keeps its port in TIME_WAIT, as a busy HTTP client does.
SERVER = r"""
import socket, sys, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.listen(4096)
sock.settimeout(1.0)
print("listening", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        conn, _ = sock.accept()
    except socket.timeout:
        continue
    conn.settimeout(5.0)
    try:
        conn.recv(1)
    except OSError:
        pass
    conn.close()
"""

# CHURN ADDRESS PORT ATTEMPTS STOP_AFTER SECONDS: at most ATTEMPTS connect()/close(), for at most SECONDS,
# stopping at the STOP_AFTER-th EADDRNOTAVAIL (0: never early). Prints one JSON line of counts.
CHURN = r"""
import errno, json, socket, sys, time
address, port, attempts, stop_after, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
started = time.monotonic()
made = eaddrnotavail = other = 0
errors = {}
for _ in range(attempts):
    if time.monotonic() - started > seconds or (stop_after and eaddrnotavail >= stop_after):
        break
    sock = socket.socket()
    sock.settimeout(2.0)
    try:
        sock.connect((address, port))
        made += 1
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            eaddrnotavail += 1
        else:
            other += 1
            errors[str(exc)] = errors.get(str(exc), 0) + 1
    finally:
        sock.close()
print(json.dumps({"made": made, "eaddrnotavail": eaddrnotavail, "other": other, "errors": errors,
                  "seconds": round(time.monotonic() - started, 1)}))
"""

# ECHO ADDRESS PORT SECONDS: echo every byte back on each connection until the client closes (keep-alive
# clients send many requests on one connection); the client closes first. One thread, selectors.
ECHO = r"""
import selectors, socket, sys, time
sel = selectors.DefaultSelector()
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.listen(4096)
sock.setblocking(False)
sel.register(sock, selectors.EVENT_READ)
print("listening", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    for key, dummy in sel.select(timeout=0.5):
        if key.fileobj is sock:
            try:
                conn, peer = sock.accept()
            except OSError:
                continue
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ)
            continue
        conn = key.fileobj
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if data:
            try:
                conn.sendall(data)
            except OSError:
                data = b""
        if not data:
            sel.unregister(conn)
            conn.close()
"""

# STEADY ADDRESS PORT RATE SECONDS HOLD_MS: a churning client at a steady RATE of new connections per second
# for SECONDS: each connects, sends one byte, reads it back, holds the connection HOLD_MS in all, closes (the
# client closes first: its port stays in TIME_WAIT). At most RATE * SECONDS connections. Prints "running", then
# one JSON line: pid, made, failed (eaddrnotavail of them), seconds, rate (made / seconds), under_10ms (connections
# that lived less),
# longest_ms (the longest a connection lived).
STEADY = r"""
import errno, json, os, socket, sys, time
address, port, rate, seconds, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]) / 1000
print("running", flush=True)
started = time.monotonic()
made = failed = eaddrnotavail = under_10ms = 0
longest = 0.0
for index in range(int(rate * seconds)):
    due = started + index / rate
    now = time.monotonic()
    if now < due:
        time.sleep(due - now)
    opened = time.monotonic()
    sock = socket.socket()
    sock.settimeout(2.0)
    try:
        sock.connect((address, port))
        sock.sendall(b"x")
        sock.recv(1)
        left = hold - (time.monotonic() - opened)
        if left > 0:
            time.sleep(left)
        made += 1
    except OSError as exc:
        failed += 1
        eaddrnotavail += exc.errno == errno.EADDRNOTAVAIL
    finally:
        sock.close()
    lived = time.monotonic() - opened
    longest = max(longest, lived)
    under_10ms += lived < 0.010
elapsed = time.monotonic() - started
print(json.dumps({"pid": os.getpid(), "made": made, "failed": failed, "eaddrnotavail": eaddrnotavail,
                  "seconds": round(elapsed, 3),
                  "rate": round(made / elapsed, 2), "under_10ms": under_10ms, "longest_ms": round(longest * 1000, 2)}),
      flush=True)
"""

# POOLED ADDRESS PORT CONNECTIONS RATE SECONDS: a pooled client: CONNECTIONS keep-alive connections opened once,
# then RATE one-byte requests per second spread over them for SECONDS (the same traffic volume as STEADY at the
# same RATE, without new connections). Prints "running", then one JSON line of counts.
POOLED = r"""
import json, socket, sys, time
address, port, count, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
pool = []
for dummy in range(count):
    sock = socket.create_connection((address, port), timeout=2.0)
    pool.append(sock)
print("running", flush=True)
started = time.monotonic()
requests = failed = 0
for index in range(int(rate * seconds)):
    due = started + index / rate
    now = time.monotonic()
    if now < due:
        time.sleep(due - now)
    sock = pool[index % count]
    try:
        sock.sendall(b"x")
        sock.recv(1)
        requests += 1
    except OSError:
        failed += 1
for sock in pool:
    sock.close()
print(json.dumps({"requests": requests, "failed": failed, "connections": count,
                  "seconds": round(time.monotonic() - started, 3)}), flush=True)
"""

# BINDER ADDRESS LOCAL_ADDRESS PORT BATCH HOLD SECONDS: a client that binds before it connects: each round binds
# BATCH sockets to (LOCAL_ADDRESS, 0), so each takes an ephemeral port for every destination, holds them HOLD
# seconds unconnected, then connects and closes them. At most SECONDS / HOLD + 1 rounds. Prints "running", then
# one JSON line of counts.
BINDER = r"""
import json, socket, sys, time
address, local, port, batch, hold, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
print("running", flush=True)
started = time.monotonic()
bound = made = failed = 0
for dummy in range(int(seconds / hold) + 1):
    if time.monotonic() - started >= seconds:
        break
    socks = []
    for dummy2 in range(batch):
        sock = socket.socket()
        sock.bind((local, 0))
        socks.append(sock)
        bound += 1
    time.sleep(hold)
    for sock in socks:
        sock.settimeout(2.0)
        try:
            sock.connect((address, port))
            made += 1
        except OSError:
            failed += 1
        sock.close()
print(json.dumps({"bound": bound, "made": made, "failed": failed,
                  "seconds": round(time.monotonic() - started, 3)}), flush=True)
"""

# SELF_CHURN ADDRESSES PORTS CONNECTIONS SECONDS: one process is both ends of a loopback churn, with no context
# switch per connection: it listens on every (address, port) of ADDRESSES x PORTS (comma-separated), then round
# robin connect()s to each, accept()s the connection itself, and closes the client end first, then the server end
# (the client port stays 60 s in TIME_WAIT, as a busy HTTP client's does). No bind() before connect(): each
# destination tuple has its own range of ephemeral ports. At most CONNECTIONS connections and SECONDS; a failed
# connect() (EADDRNOTAVAIL when a tuple's ports are all in TIME_WAIT) waits 1 ms. Prints "listening", and at the
# end one JSON line of counts. Measured here (2 vCPUs, Linux 6.18): about 29,000 connections per second from one
# such process, where 4 client processes and 16 blocking server processes together reached about 8,700.
SELF_CHURN = r"""
import json, socket, sys, time
addresses, ports = sys.argv[1].split(","), [int(p) for p in sys.argv[2].split(",")]
total, seconds = int(sys.argv[3]), float(sys.argv[4])
listeners = []
for address in addresses:
    for port in ports:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(4096)
        sock.settimeout(5.0)
        listeners.append(((address, port), sock))
print("listening", flush=True)
made = failed = 0
errors = {}
started = time.monotonic()
deadline = started + seconds
while made < total and time.monotonic() < deadline:
    for target, listener in listeners:
        client = socket.socket()
        try:
            client.connect(target)
            server, peer = listener.accept()
        except OSError as exc:
            failed += 1
            errors[str(exc)] = errors.get(str(exc), 0) + 1
            client.close()
            time.sleep(0.001)
            continue
        client.close()
        server.close()
        made += 1
print(json.dumps({"made": made, "failed": failed, "errors": errors, "seconds": round(time.monotonic() - started, 2)}),
      flush=True)
"""

# ESTABLISHED ADDRESS PORT CONNECTIONS SECONDS: one process listens on (ADDRESS, PORT) and opens CONNECTIONS
# loopback connections to it, accepting each itself: both ends are held ESTABLISHED (2 sockets and 2 descriptors
# per connection), opened once, idle. It raises its soft RLIMIT_NOFILE to fit, within its hard limit (never
# above: fewer connections are opened if the hard limit is lower, and the "ready" line says how many). At most
# CONNECTIONS connections, opened in batches of at most 1,024 (within the listen backlog), and held at most
# SECONDS. Prints "ready N SECONDS_TO_OPEN [ERROR]", then holds them until SIGTERM, SIGKILL or SECONDS.
ESTABLISHED = r"""
import os, resource, signal, socket, sys, time
address, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard != resource.RLIM_INFINITY:
    count = max(0, min(count, (hard - 64) // 2))
if soft != resource.RLIM_INFINITY and soft < 2 * count + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (2 * count + 64, hard))
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((address, port))
listener.listen(4096)
listener.settimeout(5.0)
held = []
error = None
started = time.monotonic()
deadline = started + seconds
while len(held) < 2 * count and error is None and time.monotonic() < deadline:
    clients = []
    for dummy in range(min(1024, count - len(held) // 2)):
        client = socket.socket()
        try:
            client.connect((address, port))
        except OSError as exc:
            client.close()
            error = "connect: %s" % exc
            break
        clients.append(client)
    for client in clients:
        try:
            server, peer = listener.accept()
        except OSError as exc:
            error = error or "accept: %s" % exc
            client.close()
            continue
        held.append(client)
        held.append(server)
print(("ready %d %.2f %s" % (len(held) // 2, time.monotonic() - started, error or "")).strip(), flush=True)
signal.signal(signal.SIGTERM, lambda *args: os._exit(0))
time.sleep(max(0.0, deadline - time.monotonic()))
"""
