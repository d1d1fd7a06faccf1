"""Bounded test traffic, run with ``python3 -c SCRIPT ARGS`` inside network namespaces the caller made
(Sandbox.start, ClientServer.serve, Sandbox.exec).

Shared by the integration tests and the demo; every loop is bounded in count and time.
"""

from __future__ import annotations

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
