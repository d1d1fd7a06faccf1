"""A bounded connection churn inside a molecule container: the incident the port_monitor scenario replays.

    python3 churn.py ADDRESS PORT ATTEMPTS STOP_AFTER SECONDS

Listens on ADDRESS:PORT (a thread accepts, waits for the client's FIN, closes), then connect()s and closes, the
client first so that it keeps each port in TIME_WAIT as a busy HTTP client does: at most ATTEMPTS times, for at
most SECONDS, stopping at the STOP_AFTER-th EADDRNOTAVAIL.  Prints one JSON line of counts.  Standard library only.
"""

import errno
import json
import socket
import sys
import threading
import time

address, port, attempts, stop_after, seconds = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                                float(sys.argv[5]))
started = time.monotonic()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((address, port))
listener.listen(4096)
listener.settimeout(0.5)


def serve():
    while time.monotonic() - started < seconds + 5:
        try:
            conn = listener.accept()[0]
        except socket.timeout:
            continue
        conn.settimeout(5.0)
        try:
            conn.recv(1)
        except OSError:
            pass
        conn.close()


threading.Thread(target=serve, daemon=True).start()
made = eaddrnotavail = other = 0
for attempt in range(attempts):
    if time.monotonic() - started > seconds or eaddrnotavail >= stop_after:
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
    finally:
        sock.close()
time.sleep(1.0)  # let the server close its side
print(json.dumps({"made": made, "eaddrnotavail": eaddrnotavail, "other": other,
                  "seconds": round(time.monotonic() - started, 1)}))
