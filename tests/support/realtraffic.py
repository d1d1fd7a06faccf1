"""Real third-party traffic for port_usage_info (issue 21): nginx as the server, ApacheBench, curl, wrk and
python-requests as clients, between two network namespaces joined by a veth pair (tests.support.veth).

One harness for tests/integration/test_real_traffic.py and bench/attribution.py ("real"):

    with RealLab() as lab:                              # client 10.214.0.1, server 10.214.0.2, client range 40000-40999
        lab.nginx(keepalive_timeout=0)                  # real nginx in the server namespace, a temp config
        ab = lab.ab(requests=80, path=PACED)            # ab -c 1 against a location nginx paces at 10 requests/s
        run = lab.audit(sample_seconds=5)               # the module's own main(), inside the client namespace
        truth = ab.truth(run.window)                    # the client's OWN count over the sample window

Truth is always the client's own count: ab's "Completed N requests" lines and its final "Complete requests"; the
curl loop's counter file (ok, exit 7, other); the python client's progress lines.  Each is timestamped on arrival
(time.monotonic, the same clock in every namespace), so the rate over the module's sample window is read off the
client's own counts even while the run's own CPU use slows a flat-out client.

The module runs through its real entry point (plugins/modules/port_usage_info.py main(), the AnsibleModule argument
spec and exit_json) by ``lab.audit``, or through ansible-playbook by ``lab.audit_playbook`` as
tests/integration/test_port_usage_info.py does.  Every client is bounded in count and time; traffic only flows
inside the two namespaces; ``destroy`` (leaving the ``with``) stops every process and deletes the namespaces and the
temp directory.  Needs root, nginx, ab (apache2-utils), wrk, curl, bash, unshare and python3-requests
(``missing_tools``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.collection import collections_path
from tests.support.netns import SandboxError, python_interpreter, stop_process
from tests.support.veth import ClientServer

CLIENT_IP, SERVER_IP = "10.214.0.1", "10.214.0.2"
HTTP_PORT = 8080
RANGE = "40000 40999"  # 1,000 ports
RANGE_SIZE = 1000
SAMPLE_SECONDS = 5
PACED = "/paced.txt"  # nginx delays requests to this location to PACED_RATE per second (limit_req)
# A response with no length (sub_filter drops Content-Length, chunked is off): its end is the server's FIN, so the
# server closes first every time.  Against "/" (Content-Length), curl reads the body and closes before nginx's FIN
# arrives in about 10% of requests (measured flat out: ~120 client TIME_WAITs after ~1,300 requests), and those
# TIME_WAITs are the client's.
EOF_PATH = "/eof"
PACED_RATE = 10
NGINX_SECONDS = 900  # the longest nginx may run, should its test die without stopping it
MODULE = "ansible_collections.tcpstack.tuning.plugins.modules.port_usage_info"
TOOLS = ("nginx", "ab", "wrk", "curl", "bash", "unshare", "ss", "timeout")

NGINX_CONF = """
worker_processes {workers};
worker_rlimit_nofile 8192;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout {keepalive};
    keepalive_requests 1000000;
    client_header_timeout 300s;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    limit_req_zone $binary_remote_addr zone=paced:1m rate={paced}r/s;
    server {{
        listen {address}:{port} backlog=4096;
        root {dir}/www;
        location = / {{ return 200 "ok\\n"; }}
        location = {eof_path} {{
            sub_filter_types *; sub_filter "ok" "ok"; chunked_transfer_encoding off;
            return 200 "ok\\n";
        }}
        location = {paced_path} {{ limit_req zone=paced burst=1000; }}
    }}
}}
"""

# The python client (run with the system python3, which has requests).  argv: MODE HOST PORT RATE SECONDS COUNT.
# MODE: "connect" connect() and close(), the client first; "close" an HTTP/1.1 request with "Connection: close",
# read to the server's FIN (the server closes first); "requests" requests.get() without a Session (a new
# connection each); "session" one requests.Session (keep-alive).  RATE 0: flat out.  Prints "running PID", progress
# lines "p MADE FAILED" (at most every 0.1 s), then one JSON line.
PY_CLIENT = r"""
import json, os, socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
rate, seconds, count = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
url = "http://%s:%d/" % (host, port)
if mode in ("requests", "session"):
    import requests
    session = requests.Session()
REQUEST = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode()
def once():
    if mode == "connect":
        socket.create_connection((host, port), timeout=5).close()
    elif mode == "close":
        sock = socket.create_connection((host, port), timeout=5)
        try:
            sock.sendall(REQUEST)
            while sock.recv(65536):
                pass
        finally:
            sock.close()
    elif mode == "requests":
        requests.get(url, timeout=5).content
    else:
        session.get(url, timeout=5).content
made = failed = 0
errors = {}
print("running %d" % os.getpid(), flush=True)
start = last = time.monotonic()
print("p 0 0", flush=True)
for i in range(count):
    now = time.monotonic()
    if now - start >= seconds:
        break
    if rate:
        due = start + i / rate
        if due > now:
            time.sleep(due - now)
    try:
        once()
        made += 1
    except Exception as exc:
        failed += 1
        key = "%s %s" % (type(exc).__name__, getattr(exc, "errno", ""))
        errors[key] = errors.get(key, 0) + 1
    now = time.monotonic()
    if now - last >= 0.1:
        print("p %d %d" % (made, failed), flush=True)
        last = now
elapsed = time.monotonic() - start
print("p %d %d" % (made, failed), flush=True)
print(json.dumps({"pid": os.getpid(), "mode": mode, "made": made, "failed": failed, "errors": errors,
                  "seconds": round(elapsed, 3), "rate": round(made / elapsed, 2) if elapsed else 0.0}), flush=True)
"""

# A shell loop that starts a new curl per request (bash; its only children are the curls: it sleeps with the
# builtin ``read -t`` on a FIFO and writes its counter file with the builtin echo).  argv: URL COUNT SECONDS INTERVAL
# COUNTER FIFO.  Counts curl's exit status: 0 ok, 7 failed to connect (EADDRNOTAVAIL when the range ran out), other.
CURL_LOOP = r"""
url=$1 count=$2 seconds=$3 interval=$4 counter=$5
exec 3<>"$6"
ok=0 fail=0 other=0 i=0
end=$(( ${EPOCHREALTIME%.*} + seconds ))
echo "0 0 0" > "$counter"
echo "running $$"
while [ "$i" -lt "$count" ] && [ "${EPOCHREALTIME%.*}" -lt "$end" ]; do
    curl -s -o /dev/null --max-time 5 "$url"
    rc=$?
    i=$((i + 1))
    case $rc in 0) ok=$((ok + 1)) ;; 7) fail=$((fail + 1)) ;; *) other=$((other + 1)) ;; esac
    echo "$ok $fail $other" > "$counter"
    [ "$interval" = 0 ] || read -r -t "$interval" -u 3
done
echo "done $ok $fail $other"
"""

# Opens COUNT connections to HOST:PORT and holds them idle (nginx waits client_header_timeout, 300 s, for a
# request); prints "ready N [ERROR]", holds until the end of its stdin or SECONDS.  argv: HOST PORT COUNT SECONDS.
HOLDER = r"""
import resource, select, socket, sys, time
host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 64)), hard))
held, error = [], ""
for dummy in range(count):
    try:
        held.append(socket.create_connection((host, port), timeout=5))
    except OSError as exc:
        error = str(exc)
        break
print(("ready %d %s" % (len(held), error)).strip(), flush=True)
select.select([sys.stdin], [], [], seconds)
"""

# Creates HOLD + CHURN sockets, connects HOLD of them, then unshares a new network namespace (CLONE_NEWNET): its
# sockets stay in the namespace they were created in.  Then connects and closes the other CHURN (the client first)
# at RATE per second, and exits.  Prints "running PID" after the unshare, progress lines "p MADE FAILED", one JSON
# line.
# argv: HOST PORT HOLD CHURN RATE.
UNSHARER = r"""
import ctypes, json, os, socket, sys, time
host, port, hold, churn, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
socks = [socket.socket() for dummy in range(hold + churn)]
for sock in socks[:hold]:
    sock.connect((host, port))
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x40000000) != 0:
    print("unshare failed: errno %d" % ctypes.get_errno(), flush=True)
    sys.exit(1)
print("running %d" % os.getpid(), flush=True)
made = failed = 0
start = last = time.monotonic()
print("p 0 0", flush=True)
for i, sock in enumerate(socks[hold:]):
    due = start + i / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    try:
        sock.connect((host, port))
        made += 1
    except OSError:
        failed += 1
    sock.close()
    if time.monotonic() - last >= 0.1:
        print("p %d %d" % (made, failed), flush=True)
        last = time.monotonic()
elapsed = time.monotonic() - start
print("p %d %d" % (made, failed), flush=True)
print(json.dumps({"pid": os.getpid(), "made": made, "failed": failed, "seconds": round(elapsed, 3),
                  "rate": round(made / elapsed, 2)}), flush=True)
"""

# The module's own entry point (main(): AnsibleModule, its argument spec, exit_json), run in this process so that
# its CPU time and peak RSS are this process's.  The imports are done before the clock starts.  argv: ARGS_FILE.
# Prints one JSON line: t0/t1 (time.monotonic around main()), cpu_seconds (of main()), peak_rss_mb, result.
MODULE_RUNNER = r"""
import contextlib, io, json, resource, runpy, sys, time
import ansible.module_utils.basic
from ansible_collections.tcpstack.tuning.plugins.module_utils import linux_port_usage
sys.argv = ["port_usage_info", sys.argv[1]]
out = io.StringIO()
code = 0
before = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.monotonic()
with contextlib.redirect_stdout(out):
    try:
        runpy.run_module("%s", run_name="__main__")
    except SystemExit as exc:
        code = exc.code
t1 = time.monotonic()
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(json.dumps({"t0": t0, "t1": t1, "rc": code, "cpu_seconds": round(cpu, 4),
                  "peak_rss_mb": round(after.ru_maxrss / 1024.0, 1), "result": json.loads(out.getvalue())}))
""" % MODULE

# ``ss -tanp`` every 10 ms for SECONDS (argv), each a fresh process reaped with wait4(): their CPU time summed.
SS_POLL = r"""
import json, os, subprocess, sys, time
seconds = float(sys.argv[1])
cpu, runs, start = 0.0, 0, time.monotonic()
while time.monotonic() - start < seconds:
    tick = time.monotonic()
    child = subprocess.Popen(["ss", "-tanp"], stdout=subprocess.DEVNULL)
    dummy, status, usage = os.wait4(child.pid, 0)
    cpu += usage.ru_utime + usage.ru_stime
    runs += 1
    left = 0.010 - (time.monotonic() - tick)
    if left > 0:
        time.sleep(left)
print(json.dumps({"cpu_seconds": round(cpu, 4), "runs": runs, "seconds": round(time.monotonic() - start, 3)}))
"""


def missing_tools():
    """What this harness needs and the machine lacks (sentences), [] when all is there."""
    problems = ["the %s command" % tool for tool in TOOLS if shutil.which(tool, path=os.environ.get("PATH", "") +
                                                                          ":/usr/sbin:/sbin") is None]
    done = subprocess.run([python_interpreter(), "-c", "import requests"], capture_output=True, check=False)
    if done.returncode != 0:
        problems.append("python3-requests for %s" % python_interpreter())
    return problems


def interpolate(points, moment):
    """(made, failed) at ``moment`` from the time-ordered progress ``points`` [(t, made, failed)], linear between
    the two points around it (the first or last point outside them)."""
    if not points:
        return 0.0, 0.0
    if moment <= points[0][0]:
        return float(points[0][1]), float(points[0][2])
    for (t_a, made_a, failed_a), (t_b, made_b, failed_b) in zip(points, points[1:]):
        if t_a <= moment <= t_b:
            part = (moment - t_a) / (t_b - t_a) if t_b > t_a else 1.0
            return made_a + part * (made_b - made_a), failed_a + part * (failed_b - failed_a)
    return float(points[-1][1]), float(points[-1][2])


@dataclass
class Truth:
    """The client's own count over a window: connections made (completed requests) and failed, per second."""

    made: float
    failed: float
    seconds: float
    covered: bool  # the client's own counts span the whole window (it ran before and after)

    @property
    def rate(self):
        return self.made / self.seconds if self.seconds else 0.0

    @property
    def failed_rate(self):
        return self.failed / self.seconds if self.seconds else 0.0


class Client:
    """A client started in the client namespace; ``points`` its own counts, timestamped on arrival."""

    def __init__(self, name, child, pid=None):
        self.name = name
        self.child = child
        self.pid = pid if pid is not None else child.pid
        self.points = []  # [(time.monotonic(), made, failed)]
        self.report = None  # the final report: a dict
        self.lines = []
        self._lock = threading.Lock()
        self._thread = None

    def add(self, made, failed, moment=None):
        with self._lock:
            self.points.append((time.monotonic() if moment is None else moment, made, failed))

    def follow(self, stream, parse):
        """Read ``stream`` (text lines) in a thread; ``parse(line)`` -> (made, failed) or None."""
        def run():
            for line in stream:
                self.lines.append(line.rstrip("\n"))
                found = parse(line)
                if found is not None:
                    self.add(*found)
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def reaches(self, moment):
        """Whether the client's own counts go on to ``moment`` (a point at or after it)."""
        with self._lock:
            return any(point[0] >= moment for point in self.points)

    def truth(self, window):
        """Truth over ``window`` (t0, t1) from the client's own counts."""
        start, end = window
        with self._lock:
            points = sorted(self.points)
        made_a, failed_a = interpolate(points, start)
        made_b, failed_b = interpolate(points, end)
        covered = bool(points) and points[0][0] <= start + 0.05 and points[-1][0] >= end - 0.3
        return Truth(made_b - made_a, failed_b - failed_a, end - start, covered)

    def wait(self, seconds):
        """Wait at most ``seconds`` for the client to end (its reader to finish); returns its exit code or None."""
        try:
            code = self.child.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None
        if self._thread is not None:
            self._thread.join(timeout=5)
        return code

    def stop(self):
        stop_process(self.child)
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass
class AuditRun:
    """One run of the module: its result, the monotonic time it started and ended, its CPU time and peak RSS."""

    result: dict
    t0: float
    t1: float
    cpu_seconds: float = None
    peak_rss_mb: float = None
    raw: dict = field(default_factory=dict)

    @property
    def sampled_seconds(self):
        return ((self.result.get("attribution") or {}).get("sampled_seconds")
                or ((self.result.get("counters") or {}).get("sample") or {}).get("seconds") or 0.0)

    @property
    def window(self):
        """The sample window, as well as it can be known from outside: from the start of main() on."""
        return self.t0, self.t0 + (self.sampled_seconds or (self.t1 - self.t0))

    def process(self, pid):
        """The result's process entry of ``pid`` (None when it is not listed)."""
        for row in self.result.get("processes") or ():
            if row.get("pid") == pid:
                return row
        return None


class RealLab:
    """Client and server namespaces on one veth wire; the client's range is RANGE (1,000 ports)."""

    def __init__(self, prefixes=("rtc", "rts"), port_range=RANGE):
        self.link = ClientServer(CLIENT_IP, SERVER_IP, prefixes=prefixes)
        self.client, self.server = self.link.client, self.link.server
        self.port_range = port_range
        self.dir = None
        self._nginx = None
        self.clients = []
        self._serial = 0

    # lifecycle ----------------------------------------------------------
    def create(self):
        try:
            self.link.create()
            self.dir = Path(tempfile.mkdtemp(prefix="tcpstack-real-"))
            self.dir.chmod(0o755)  # nginx's workers (nobody) read www/
            (self.dir / "www").mkdir(mode=0o755)
            (self.dir / "www" / PACED.lstrip("/")).write_text("ok\n")
            (self.dir / "tmp").mkdir()
            got = self.client.set_sysctl("net.ipv4.ip_local_port_range", self.port_range)
            if got.split() != self.port_range.split():
                raise SandboxError("the client's port range is %r, not %r" % (got, self.port_range))
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self):
        for client in self.clients:
            client.stop()
        self.clients = []
        if self._nginx is not None:
            stop_process(self._nginx)
            self._nginx = None
        self.link.destroy()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.destroy()
        return False

    def url(self, path="/"):
        return "http://%s:%d%s" % (SERVER_IP, HTTP_PORT, path)

    # the server ---------------------------------------------------------
    def nginx(self, keepalive_timeout=65, workers=1, seconds=10.0):
        """(Re)start nginx in the server namespace with ``keepalive_timeout`` (0: the server closes every
        connection first, after its response) and ``workers`` worker processes; returns once it listens."""
        if self._nginx is not None:
            stop_process(self._nginx)
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=workers, dir=self.dir, keepalive=keepalive_timeout,
                                          paced=PACED_RATE, paced_path=PACED, eof_path=EOF_PATH, address=SERVER_IP,
                                          port=HTTP_PORT))
        # bounded in time like every process here: ``timeout`` ends it (SIGTERM: nginx's fast shutdown) at the latest
        self._nginx = subprocess.Popen(self.server.argv(["timeout", NGINX_SECONDS, "nginx", "-p", self.dir,
                                                         "-e", self.dir / "error.log", "-c", conf]),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       start_new_session=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._nginx.poll() is not None:
                raise SandboxError("nginx exited (rc=%s): %s" % (self._nginx.returncode, self._nginx.stderr.read()))
            listening = self.server.exec(["ss", "-Hltn", "sport", "=", ":%d" % HTTP_PORT]).stdout
            if listening.strip():
                return self._nginx
            time.sleep(0.1)
        raise SandboxError("nginx did not listen on %s:%d within %.0f s" % (SERVER_IP, HTTP_PORT, seconds))

    # clients ------------------------------------------------------------
    def _start(self, cmd, stderr=subprocess.DEVNULL, stdin=None):
        child = subprocess.Popen(self.client.argv(cmd), stdout=subprocess.PIPE, stderr=stderr, stdin=stdin,
                                 text=True, start_new_session=True)
        return child

    def _running(self, name, child):
        """Wait for the client's "running PID" line; returns its Client (registered for teardown)."""
        line = child.stdout.readline().split()
        if line[:1] != ["running"]:
            stop_process(child)
            raise SandboxError("%s did not start: it printed %r" % (name, " ".join(line)))
        client = Client(name, child, pid=int(line[1]))
        self.clients.append(client)
        return client

    def python_client(self, mode, rate=0.0, seconds=15.0, count=1000000, path="/"):
        """The python client (PY_CLIENT) in ``mode``, paced at ``rate`` per second (0: flat out)."""
        del path  # every mode requests "/"
        child = self._start([python_interpreter(), "-c", PY_CLIENT, mode, SERVER_IP, HTTP_PORT, rate, seconds, count])
        return self._progress(self._running("python %s" % mode, child), child)

    def ab(self, requests, concurrency=1, keepalive=False, path="/", seconds=60):
        """ApacheBench: ``requests`` requests (HTTP/1.0; with ``keepalive`` -k), ``concurrency`` at a time, at most
        ``seconds``.  Its own counts: "Completed N requests" (every tenth of the run, when more than 150) and the
        final "Complete requests" / "Failed requests"."""
        cmd = ["ab", "-q" if requests <= 150 else "-d", "-r", "-s", 5, "-t", seconds, "-n", requests,
               "-c", concurrency] + (["-k"] if keepalive else []) + [self.url(path)]
        child = subprocess.Popen(self.client.argv(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        client = Client("ab", child)
        client.add(0, 0)
        self.clients.append(client)
        heartbeat = re.compile(r"Completed (\d+) requests")

        def parse(line):
            found = heartbeat.search(line)
            return (int(found.group(1)), 0) if found else None
        client.follow(child.stderr, parse)
        threading.Thread(target=self._ab_report, args=(client,), daemon=True).start()
        return client

    @staticmethod
    def _ab_report(client):
        text = client.child.stdout.read()
        ended = time.monotonic()
        report = {"output": text}
        for key, pattern in (("complete", r"Complete requests:\s+(\d+)"), ("failed", r"Failed requests:\s+(\d+)"),
                             ("seconds", r"Time taken for tests:\s+([\d.]+)")):
            found = re.search(pattern, text)
            report[key] = float(found.group(1)) if found else None
        if report["complete"] is not None and report["seconds"]:
            report["rate"] = round(report["complete"] / report["seconds"], 2)
            client.report = report
        if report["complete"] is not None:
            client.add(int(report["complete"]), int(report["failed"] or 0), ended)

    def wrk(self, seconds=15, connections=4, path="/"):
        """wrk (keep-alive): ``connections`` connections on one thread for ``seconds``."""
        child = subprocess.Popen(self.client.argv(["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds,
                                                   self.url(path)]),
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        client = Client("wrk", child)
        self.clients.append(client)

        def parse(line):
            found = re.search(r"(\d+) requests in ([\d.]+)s", line)
            if found:
                client.report = {"requests": int(found.group(1)), "seconds": float(found.group(2))}
            return None
        return client.follow(child.stdout, parse)

    def curl_loop(self, interval=0.0, seconds=15.0, count=100000, path="/"):
        """The shell loop (CURL_LOOP): a new curl per request, ``interval`` seconds between them (0: flat out).
        ``pid``: the loop's (bash's) own pid.  Its own counts come from its counter file, polled every 20 ms."""
        self._serial += 1
        counter = self.dir / ("loop-%d.count" % self._serial)
        fifo = self.dir / ("loop-%d.fifo" % self._serial)
        os.mkfifo(fifo)
        child = self._start(["bash", "-c", CURL_LOOP, "curl-loop", self.url(path), count, seconds, interval, counter,
                             fifo])
        client = self._running("curl loop", child)
        threading.Thread(target=self._poll_counter, args=(client, counter), daemon=True).start()
        return client

    @staticmethod
    def _poll_counter(client, counter):
        """The loop's counter file "OK FAILED OTHER", read every 20 ms until the loop ends (at most 10 minutes)."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            ended = client.child.poll() is not None
            try:
                fields = counter.read_text().split()
            except OSError:
                fields = []
            if len(fields) == 3:
                client.add(int(fields[0]), int(fields[1]))
                client.report = {"ok": int(fields[0]), "failed": int(fields[1]), "other": int(fields[2])}
            if ended:
                return
            time.sleep(0.02)

    def holder(self, count, seconds=120):
        """COUNT idle connections held to the server (HOLDER) until stop() or ``seconds``; returns (Client, held)."""
        child = self._start([python_interpreter(), "-c", HOLDER, SERVER_IP, HTTP_PORT, count, seconds],
                            stdin=subprocess.PIPE)
        client = Client("holder", child)
        self.clients.append(client)
        fields = child.stdout.readline().split(None, 2)
        if fields[:1] != ["ready"]:
            raise SandboxError("the holder did not start: %r" % fields)
        return client, int(fields[1])

    def unsharer(self, hold=20, churn=300, rate=40.0):
        """UNSHARER: HOLD connections, then a new network namespace, then CHURN connections at RATE per second."""
        child = self._start([python_interpreter(), "-c", UNSHARER, SERVER_IP, HTTP_PORT, hold, churn, rate])
        return self._progress(self._running("unsharer", child), child)

    @staticmethod
    def _progress(client, child):
        """Follow a python client's progress lines ("p MADE FAILED") and its final JSON report."""

        def parse(line):
            if line.startswith("p "):
                fields = line.split()
                return int(fields[1]), int(fields[2])
            if line.startswith("{"):
                client.report = json.loads(line)
            return None
        return client.follow(child.stdout, parse)

    # the module ---------------------------------------------------------
    def audit(self, sample_seconds=SAMPLE_SECONDS, top=10, prefix=()):
        """port_usage_info's main() inside the client namespace (MODULE_RUNNER), behind ``prefix`` (argv put
        before the interpreter, e.g. ``unshare --pid --fork --mount-proc``)."""
        args = self.dir / "module-args.json"
        args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"top": top, "sample_seconds": sample_seconds}}))
        done = self.client.exec(list(prefix) + [sys.executable, "-c", MODULE_RUNNER, args],
                                timeout=sample_seconds + 120, env=module_env())
        return audit_run(json.loads(done.stdout))

    def audit_playbook(self, sample_seconds=SAMPLE_SECONDS, top=10):
        """port_usage_info through a real ansible-playbook in the client namespace (as test_port_usage_info does).
        Its window is taken as the sample's length before the end of the run, less the module's own exit."""
        play = json.dumps([{"name": "port_usage_info", "hosts": "all", "gather_facts": False, "tasks": [
            {"name": "audit", "tcpstack.tuning.port_usage_info": {"sample_seconds": sample_seconds, "top": top}}]}])
        rc, results = self.client.run_playbook(play, timeout=sample_seconds + 180)
        ended = time.monotonic()
        if rc != 0:
            raise SandboxError(self.client.last_run.describe())
        (result,) = [r for r in results if r["_task"] == "audit"]
        run = AuditRun(result, 0.0, ended)
        run.t0 = ended - 1.0 - run.sampled_seconds
        return run


def module_env():
    return dict(os.environ, PYTHONPATH=str(collections_path()))


def audit_run(raw):
    if raw.get("rc") not in (0, None):
        raise SandboxError("port_usage_info failed (rc=%s): %s" % (raw.get("rc"), json.dumps(raw.get("result"))[:4000]))
    return AuditRun(raw["result"], raw["t0"], raw["t1"], raw.get("cpu_seconds"), raw.get("peak_rss_mb"), raw)


# A pid namespace of its own (``unshare --pid --fork --mount-proc`` inside the client namespace; this driver is its
# init): a client process A churns, the module's sample starts, A exits during the sample, and a newcomer B
# ("sleep", which opens nothing) is given A's pid by writing /proc/sys/kernel/ns_last_pid (of this pid namespace
# only: the machine's pids are untouched).  argv: CLIENT_ARGV MODULE_ARGV (JSON lists).  Prints one JSON line.
PIDNS_DRIVER = r"""
import json, os, subprocess, sys, time
client_argv, module_argv = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def start_time(pid):
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[19]) / float(os.sysconf("SC_CLK_TCK"))
first = subprocess.Popen(client_argv, stdout=subprocess.PIPE, text=True)
first.stdout.readline()
first_start = start_time(first.pid)
module = subprocess.Popen(module_argv, stdout=subprocess.PIPE, text=True)
first_out = first.communicate(timeout=60)[0]
first_exit = time.monotonic()
newcomer = None
for attempt in range(5):
    with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
        handle.write(str(first.pid - 1))
    candidate = subprocess.Popen(["sleep", "60"])
    if candidate.pid == first.pid:
        newcomer = candidate
        break
    candidate.kill()
    candidate.wait()
newcomer_start = start_time(newcomer.pid) if newcomer else None
module_out = module.communicate(timeout=180)[0]
if newcomer is not None:
    newcomer.kill()
    newcomer.wait()
report = [json.loads(line) for line in first_out.splitlines() if line.startswith("{")]
print(json.dumps({"first_pid": first.pid, "first_start": first_start, "first_exit": first_exit,
                  "first_report": report[0] if report else None,
                  "newcomer_pid": newcomer.pid if newcomer else None, "newcomer_start": newcomer_start,
                  "module": json.loads(module_out)}))
"""


@dataclass
class Outcome:
    """A scenario's module run, its client, and the client's own count over the sample window."""

    run: AuditRun
    client: Client
    truth: Truth
    extra: dict = field(default_factory=dict)

    @property
    def result(self):
        return self.run.result

    @property
    def row(self):
        """The result's process entry of the client (None when it is not listed)."""
        return self.run.process(self.client.pid)


def sampled(lab, client, sample_seconds=SAMPLE_SECONDS, warmup=1.0, playbook=False):
    """Let ``client`` settle for ``warmup`` seconds, run the module with a sample, and read the client's truth."""
    time.sleep(warmup)
    run = lab.audit_playbook(sample_seconds) if playbook else lab.audit(sample_seconds)
    return settle(run, client)


def settle(run, client, seconds=60):
    """The Outcome of ``run`` once ``client``'s own counts reach past the end of the sample window, or it has ended
    (at most ``seconds``): a client that reports its count only at its end, as ab does up to 150 requests, is then
    read between its start and its end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not client.reaches(run.window[1]) and client.child.poll() is None:
        time.sleep(0.1)
    client.wait(5)
    return Outcome(run, client, client.truth(run.window))


def server_close_ab(lab, flat_out=False, sample_seconds=SAMPLE_SECONDS):
    """ApacheBench without keep-alive (HTTP/1.0: nginx closes first): ~10/s (ab -c 1 against the location nginx
    paces at PACED_RATE per second) or flat out (ab -c 8, nginx with 2 workers)."""
    lab.nginx(keepalive_timeout=0, workers=2 if flat_out else 1)
    if flat_out:
        client = lab.ab(120000, concurrency=8, seconds=sample_seconds + 10)
    else:
        client = lab.ab(int(PACED_RATE * (sample_seconds + 8)), concurrency=1, path=PACED)
    return sampled(lab, client, sample_seconds)


def client_close(lab, rate=0.0, sample_seconds=SAMPLE_SECONDS, mode="connect", playbook=False, warmup=1.0):
    """A python client at ``rate`` per second (0: flat out): "connect" closes first itself (its ports stay in
    TIME_WAIT); "close" sends ``Connection: close`` and nginx closes first."""
    lab.nginx(keepalive_timeout=65, workers=1 if rate else 2)
    client = lab.python_client(mode, rate=rate, seconds=sample_seconds + (40 if playbook else 8))
    return sampled(lab, client, sample_seconds, warmup=warmup, playbook=playbook)


def spawn_loop(lab, interval=0.0, sample_seconds=SAMPLE_SECONDS, keepalive_timeout=65):
    """The shell loop that starts a new curl per request, ``interval`` seconds apart (0: flat out).  With
    ``keepalive_timeout`` 0 (the server closes first) it asks for EOF_PATH, whose end is the server's FIN."""
    lab.nginx(keepalive_timeout=keepalive_timeout)
    path = EOF_PATH if not keepalive_timeout else "/"
    client = lab.curl_loop(interval=interval, seconds=sample_seconds + 8, path=path)
    return sampled(lab, client, sample_seconds)


def exhausted_loop(lab, interval=0.0, sample_seconds=SAMPLE_SECONDS):
    """The range run out on purpose: RANGE_SIZE idle connections held to nginx from the client namespace (every
    port of the range towards it), then the curl loop, whose connect()s fail (EADDRNOTAVAIL, curl exit 7)."""
    lab.nginx(keepalive_timeout=65)
    holder, held = lab.holder(RANGE_SIZE)
    client = lab.curl_loop(interval=interval, seconds=sample_seconds + 8)
    outcome = sampled(lab, client, sample_seconds)
    outcome.extra.update(holder=holder, held=held)
    return outcome


def pid_reuse(lab, rate=100.0, client_seconds=2.5, sample_seconds=SAMPLE_SECONDS):
    """PIDNS_DRIVER: the churning client exits during the sample and a "sleep" takes its pid.  Returns the driver's
    report with "run" (an AuditRun) in place of "module"."""
    lab.nginx(keepalive_timeout=65)
    args = lab.dir / "module-args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"top": 10, "sample_seconds": sample_seconds}}))
    client = [python_interpreter(), "-c", PY_CLIENT, "connect", SERVER_IP, HTTP_PORT, rate, client_seconds, 1000000]
    module = [sys.executable, "-c", MODULE_RUNNER, str(args)]
    done = lab.client.exec(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", PIDNS_DRIVER,
                            json.dumps([str(c) for c in client]), json.dumps(module)],
                           timeout=sample_seconds + 180, env=module_env())
    report = json.loads(done.stdout)
    report["run"] = audit_run(report.pop("module"))
    return report
