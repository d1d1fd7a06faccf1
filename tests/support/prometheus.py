"""A real Prometheus server and node_exporter on the machine's 127.0.0.1, and the traffic that exhausts a range.

Shared by tests/integration/test_prometheus_alerts.py (the shipped alert rules in a real Prometheus, issue 22) and
bench/monitor.py (``monitor.alert_latency_seconds``).  ``Stack`` runs Debian's ``prometheus-node-exporter`` (only
its textfile collector, on the directory the sampler writes) and ``prometheus`` (its storage in a directory of the
caller, the given rule files, one scrape job of that node_exporter), each on a free port of 127.0.0.1; ``Api`` reads
Prometheus' HTTP API.  ``BACKEND`` and ``CLIENT`` are the two programs of the exhaustion (run with ``python -c``
inside namespaces the caller made).  Every loop is bounded in count and time; ``Stack`` stops what it started.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime

from tests.support.netns import stop_process

# BACKEND ADDRESS PORT SECONDS: accept every connection and close each once its client has closed (the client
# closes first and keeps its port in TIME_WAIT); held connections stay open. One thread, selectors, bounded.
BACKEND = r"""
import selectors, socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(4096)
server.setblocking(False)
chosen = selectors.DefaultSelector()
chosen.register(server, selectors.EVENT_READ)
print("listening", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    for key, _ in chosen.select(timeout=1.0):
        if key.fileobj is server:
            try:
                conn, _ = server.accept()
            except BlockingIOError:
                continue
            chosen.register(conn, selectors.EVENT_READ)
        else:
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                chosen.unregister(key.fileobj)
                key.fileobj.close()
"""

# CLIENT ADDRESS PORT HELD SECONDS: hold HELD connections (the "who" of the process series), then connect()/close()
# until EADDRNOTAVAIL (JSON: made, exhausted_at), then probe every 0.5 s until a connect() succeeds (JSON: failed,
# drained_at), then hold on; everything within SECONDS.  exhausted_at and drained_at are wall-clock (time.time()).
CLIENT = r"""
import errno, json, socket, sys, time
address, port, held, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + seconds
holding = [socket.create_connection((address, port), timeout=5) for _ in range(held)]
print(json.dumps({"held": len(holding)}), flush=True)

def attempt():
    sock = socket.socket()
    sock.settimeout(2.0)
    try:
        sock.connect((address, port))
        return True
    except OSError as exc:
        if exc.errno != errno.EADDRNOTAVAIL:
            raise
        return False
    finally:
        sock.close()

made, exhausted_at = 0, None
for _ in range(5000):
    if time.monotonic() > deadline:
        break
    if not attempt():
        exhausted_at = time.time()
        break
    made += 1
print(json.dumps({"made": made, "exhausted_at": exhausted_at}), flush=True)
failed, drained_at = 0, None
while exhausted_at and time.monotonic() < deadline:
    time.sleep(0.5)
    if attempt():
        drained_at = time.time()
        break
    failed += 1
print(json.dumps({"failed": failed, "drained_at": drained_at}), flush=True)
time.sleep(max(0.0, deadline - time.monotonic()))
"""


def free_port():
    """A TCP port free on 127.0.0.1 now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(argv, log):
    """A process in a session of its own, its output in the file ``log``; stop it with netns.stop_process."""
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


class Api:
    """Prometheus' HTTP API on 127.0.0.1:port."""

    def __init__(self, port):
        self.base = "http://127.0.0.1:%d" % port

    def get(self, path, **params):
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read().decode("utf-8"))
        assert body["status"] == "success", body
        return body["data"]

    def ready(self):
        try:
            with urllib.request.urlopen(self.base + "/-/ready", timeout=5) as answer:
                return answer.status == 200
        except OSError:
            return False

    def query(self, expr):
        return self.get("/api/v1/query", query=expr)["result"]

    def alerts(self, name, instance):
        return [alert for alert in self.get("/api/v1/alerts")["alerts"]
                if alert["labels"]["alertname"] == name and alert["labels"].get("instance") == instance]


def wait_for(check, seconds, step=0.5):
    """``check()``'s first true value, polled every ``step`` for at most ``seconds`` (its last value after that)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def timestamp(text):
    """Prometheus' RFC 3339 activeAt (nanoseconds, Z) as Unix time."""
    head, _dot, rest = text.rstrip("Z").partition(".")
    fraction = float("0." + "".join(ch for ch in rest if ch.isdigit())) if rest else 0.0
    return datetime.fromisoformat(head + "+00:00").timestamp() + fraction


def config(exporter_port, rules, scrape, evaluation):
    """prometheus.yml: scrape node_exporter on 127.0.0.1:``exporter_port`` every ``scrape`` s, evaluate the rule
    file ``rules`` every ``evaluation`` s (JSON, which is YAML)."""
    return json.dumps({
        "global": {"scrape_interval": "%ds" % scrape, "scrape_timeout": "%ds" % scrape,
                   "evaluation_interval": "%ds" % evaluation},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": ["127.0.0.1:%d" % exporter_port]}]}],
    }, indent=1)


class Stack:
    """node_exporter (textfile collector of ``textfile_dir`` only) and Prometheus (storage, config and logs in
    ``workdir``; ``rules`` evaluated every ``evaluation`` s, node_exporter scraped every ``scrape`` s), both on
    free ports of 127.0.0.1.  ``with Stack(...) as stack``: started, and ready (or RuntimeError) within
    ``ready_seconds``; ``stack.api``, ``stack.instance`` (the scrape's instance label); both stopped on leaving."""

    def __init__(self, binaries, textfile_dir, workdir, rules, scrape, evaluation, ready_seconds=60):
        self.prometheus, self.exporter = (str(path) for path in binaries)
        self.textfile_dir, self.workdir = textfile_dir, workdir
        self.rules, self.scrape, self.evaluation = rules, scrape, evaluation
        self.ready_seconds = ready_seconds
        self.exporter_port, self.prometheus_port = free_port(), free_port()
        self.instance = "127.0.0.1:%d" % self.exporter_port
        self.api = Api(self.prometheus_port)
        self.children = []

    def __enter__(self):
        try:
            (self.workdir / "prometheus.yml").write_text(config(self.exporter_port, self.rules, self.scrape,
                                                                self.evaluation))
            self.children.append(spawn([
                self.exporter, "--collector.disable-defaults", "--collector.textfile",
                "--collector.textfile.directory=%s" % self.textfile_dir,
                "--web.listen-address=127.0.0.1:%d" % self.exporter_port], self.workdir / "exporter.log"))
            self.children.append(spawn([
                self.prometheus, "--config.file=%s" % (self.workdir / "prometheus.yml"),
                "--storage.tsdb.path=%s" % (self.workdir / "tsdb"),
                "--web.listen-address=127.0.0.1:%d" % self.prometheus_port,
                "--storage.tsdb.retention.time=1h"], self.workdir / "prometheus.log"))
            if not wait_for(self.api.ready, self.ready_seconds):
                raise RuntimeError("Prometheus not ready on 127.0.0.1:%d within %d s (logs in %s)" % (
                    self.prometheus_port, self.ready_seconds, self.workdir))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for child in reversed(self.children):
            stop_process(child)
        self.children = []

    def __exit__(self, *exc):
        self.stop()
        return False
