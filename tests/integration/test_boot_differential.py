"""Differential test: predicted boot values == what systemd-sysctl and procps really apply.

For randomly generated sysctl.d layouts (and a few hand-written ones),
``linux_sysctl_d.boot_values``/``predict`` must agree, key by key and init by
init, with what ``/lib/systemd/systemd-sysctl`` and procps ``sysctl --system``
leave in a fresh network namespace given the same files.

Each layout runs in ONE ``unshare -m -n`` (boot_runner.py): a tmpfs on /run,
empty directories bind-mounted over the sysctl.d directories and an empty file
over /etc/sysctl.conf, then each tool in its own further network namespace,
restricted to exactly the managed keys (all per network namespace), so the
host is never changed.  The test also checks that the host's values are
unchanged afterwards and that keys outside the filter stayed untouched.

Environment: TCPSTACK_DIFF_LAYOUTS (default 120) random layouts from the
seeds TCPSTACK_DIFF_SEED, +1, +2, ... (default 1); a failure names the seed,
and ``TCPSTACK_DIFF_SEED=<seed> TCPSTACK_DIFF_LAYOUTS=1`` reruns just that layout.
"""

from __future__ import annotations

import json
import os
import posixpath
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import canonical, loose
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import (
    INITS,
    SYSCTL_CONF,
    boot_values,
    predict,
)

from tests.support.ci import need


RUNNER = Path(__file__).with_name("boot_runner.py")
SYSTEMD_SYSCTL = "/lib/systemd/systemd-sysctl"
SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
LAYOUTS = int(os.environ.get("TCPSTACK_DIFF_LAYOUTS", "120"))
BASE_SEED = int(os.environ.get("TCPSTACK_DIFF_SEED", "1"))
TIMEOUT = 60  # seconds for one layout, both tools

FIN = "net.ipv4.tcp_fin_timeout"
RANGE = "net.ipv4.ip_local_port_range"
RESERVED = "net.ipv4.ip_local_reserved_ports"
TW_REUSE = "net.ipv4.tcp_tw_reuse"
TW_DELAY = "net.ipv4.tcp_tw_reuse_delay"
STAMPS = "net.ipv4.tcp_timestamps"
SOMAXCONN = "net.core.somaxconn"
SYN_BACKLOG = "net.ipv4.tcp_max_syn_backlog"
MANAGED = (FIN, RANGE, RESERVED, TW_REUSE, TW_DELAY, STAMPS, SOMAXCONN, SYN_BACKLOG)
# Per-network-namespace keys outside the filters: written into layouts, must stay untouched.
OTHERS = (
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.ip_default_ttl",
)
NAMES = ("10-a.conf", "50-x.conf", "60-tcpstack-tuning.conf", "99-Z.conf", "99-sysctl.conf", "99-zz.conf")
INT_MAX = 2147483647


def _proc(key):
    return "/proc/sys/" + key.replace(".", "/")


def _host_values(keys):
    out = {}
    for key in keys:
        try:
            out[key] = Path(_proc(key)).read_text().rstrip("\n")
        except OSError:
            out[key] = None
    return out


KEYS = tuple(k for k in MANAGED if os.path.exists(_proc(k)))  # tcp_tw_reuse_delay: Linux >= 6.14
WATCH = tuple(k for k in OTHERS if os.path.exists(_proc(k)))


# --------------------------------------------------------------------------- running the tools

def _apply(layout, links=None):
    """Run both tools on ``layout`` (+ symlinks ``links``) in throw-away namespaces: the runner's reply."""
    request = {
        "layout": layout,
        "links": links or {},
        "keys": list(KEYS),
        "watch": list(WATCH),
        "host_net": os.readlink("/proc/self/ns/net"),
        "host_mnt": os.readlink("/proc/self/ns/mnt"),
        "timeout": TIMEOUT / 3,
    }
    command = ["unshare", "-m", "-n", "--propagation", "private", sys.executable, "-I", str(RUNNER)]
    try:
        proc = subprocess.run(command, input=json.dumps(request), capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after %ds" % TIMEOUT}
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        reply = {"error": "no JSON (exit %s): %s %s" % (proc.returncode, proc.stdout[-500:], proc.stderr[-1500:])}
    if proc.returncode and "error" not in reply:
        reply["error"] = "exit %s: %s" % (proc.returncode, proc.stderr[-1500:])
    return reply


@pytest.fixture(scope="module")
def boot_env(root_netns):
    """The tools are there and the runner works here; the sysctl.d directories it can cover."""
    need(os.access(SYSTEMD_SYSCTL, os.X_OK), "needs %s (Debian package systemd)" % SYSTEMD_SYSCTL)
    need(shutil.which("sysctl", path=SBIN) is not None, "needs sysctl (Debian package procps)")
    need(shutil.which("unshare") is not None, "needs unshare (Debian package util-linux)")
    before = _host_values(KEYS + WATCH)
    reply = _apply({})
    need("error" not in reply, "cannot set up the throw-away namespaces: %s" % reply.get("error"))
    yield {"dirs": [d for d in reply["dirs"] if d != SYSCTL_CONF], "sysctl_conf": SYSCTL_CONF in reply["dirs"]}
    after = _host_values(KEYS + WATCH)
    assert after == before, "the HOST's values changed during the test: %r -> %r" % (before, after)


# --------------------------------------------------------------------------- the layouts

def _ws(rng, choices=("", "", " ", " ", "  ", "\t", " \t ")):
    return rng.choice(choices)


def _ports(rng):
    low = rng.randint(1024, 65535) if rng.random() < 0.8 else rng.randint(1, 65535)
    if rng.random() < 0.5:
        return str(low)
    return "%d-%d" % (low, rng.randint(low, min(65535, low + rng.choice((0, 1, 9, 50, 2000)))))


def _value(rng, key):
    """A random value of ``key`` the kernel accepts (no leading zeros: the kernel reads 010 as octal)."""
    if key == RANGE:
        low = rng.randint(1024, 40000)
        high = rng.choice((low, low + 1, rng.randint(low, 65535), 65535, 60999))
        return "%d%s%d" % (low, rng.choice((" ", "\t", "  ", " \t", "\t\t ")), min(high, 65535))
    if key == RESERVED:
        # no blanks inside: the kernel rejects "1, 2"; unsorted and overlapping items are fine
        return ",".join(_ports(rng) for _item in range(rng.randint(1, 4)))
    if key in (TW_REUSE, STAMPS):
        return str(rng.randint(0, 2))
    if key == FIN:
        return str(rng.choice((rng.randint(1, 120), rng.randint(1, 86400))))
    if key == TW_DELAY:
        return str(rng.choice((rng.randint(1, 2000), rng.randint(1, 60000), 60000)))
    if key in (SOMAXCONN, SYN_BACKLOG):
        return str(rng.choice((rng.randint(1, 65535), rng.randint(1, INT_MAX), INT_MAX, 1)))
    if key == "net.ipv4.ip_default_ttl":
        return str(rng.randint(1, 255))
    return str(rng.randint(1, 10))  # syn(ack)_retries, keepalive_time


def _spell(rng, key):
    return key.replace(".", "/") if rng.random() < 0.25 else key


def _assignment(rng, key, value):
    dash = "-" if rng.random() < 0.2 else ""  # "-" directly before the key: "- key" is another story
    return "%s%s%s%s=%s%s%s" % (_ws(rng, ("", "", "", " ", "\t")), dash, _spell(rng, key), _ws(rng), _ws(rng),
                                value, _ws(rng, ("", "", "", " ", "\t", "  ")))


def _line(rng, earlier):
    kind = rng.choices(("set", "empty-reserved", "again", "comment", "blank", "other", "noise"),
                       weights=(10, 1, 2, 2, 2, 2, 1))[0]
    if kind == "again" and earlier:
        key = rng.choice(earlier)
        return key, _assignment(rng, key, _value(rng, key))
    if kind == "empty-reserved":  # clears the list, for both tools
        return RESERVED, "%s%s=%s" % (_spell(rng, RESERVED), _ws(rng), _ws(rng))
    if kind == "comment":
        body = rng.choice(("a comment", "%s = 7" % FIN, "%s=1024 2048" % RANGE, ""))
        return None, "%s%s%s%s" % (_ws(rng, ("", " ", "\t")), rng.choice("#;"), _ws(rng, ("", " ")), body)
    if kind == "blank":
        return None, _ws(rng, ("", "", " ", "\t"))
    if kind == "other" and WATCH:
        key = rng.choice(WATCH)
        return None, _assignment(rng, key, _value(rng, key))
    if kind == "noise":  # not an assignment: ignored by both
        return None, rng.choice(("this is not an assignment", "[section]", FIN))
    key = rng.choice(KEYS)
    return key, _assignment(rng, key, _value(rng, key))


def _text(rng):
    lines, earlier = [], []
    for _line_number in range(rng.randint(0, 5)):
        key, line = _line(rng, earlier)
        if key:
            earlier.append(key)
        lines.append(line)
    text = "\n".join(lines)
    return text + "\n" if lines and rng.random() < 0.9 else text


def generate(seed, dirs, sysctl_conf):
    """A random layout: (files {path: text}, links {path: target})."""
    rng = random.Random(seed)
    files, links = {}, {}
    for _file_number in range(rng.randint(1, 6)):
        path = posixpath.join(rng.choice(dirs), rng.choice(NAMES))
        files[path] = _text(rng)
    if sysctl_conf and rng.random() < 0.4:
        files[SYSCTL_CONF] = _text(rng)
        if rng.random() < 0.3 and "/etc/sysctl.d" in dirs:  # Debian's link
            files.pop("/etc/sysctl.d/99-sysctl.conf", None)
            links["/etc/sysctl.d/99-sysctl.conf"] = "../sysctl.conf"
    return files, links


def as_read(files, links):
    """The layout as the module's reader sees it: a symlink reads as its target ("" for /dev/null)."""
    layout = dict(files)
    for path, target in links.items():
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        layout[path] = "" if resolved == "/dev/null" else files[resolved]
    return layout


# --------------------------------------------------------------------------- comparing

def _show(files, links):
    out = []
    for path in sorted(set(files) | set(links)):
        if path in links:
            out.append("  %s -> %s" % (path, links[path]))
        else:
            out.append("  %s:" % path)
            out.extend("    | %r" % line for line in files[path].split("\n"))
    return "\n".join(out) or "  (no files)"


def _meaning(key, value):
    return None if value is None else loose(key, value)


def compare(label, files, links, reply, expect=None):
    """Mismatch descriptions (empty: prediction, reality and ``expect`` agree)."""
    if "error" in reply:
        return ["%s: the runner failed: %s\nlayout:\n%s" % (label, reply["error"], _show(files, links))]
    layout = as_read(files, links)
    problems = []
    for init in INITS:
        real = reply[init]
        if "error" in real:
            problems.append("%s [%s]: %s" % (label, init, real["error"]))
            continue
        if real["watch_after"] != real["watch_before"]:
            problems.append("%s [%s]: a key outside the filter was written: %r -> %r" % (
                label, init, real["watch_before"], real["watch_after"]))
        if init == "procps":
            written = [line.split(" = ", 1)[0] for line in real["stdout"].splitlines()
                       if " = " in line and not line.startswith("* ")]
            stray = sorted(set(written) - set(KEYS))
            if stray:
                problems.append("%s [procps]: wrote keys outside the filter: %s" % (label, stray))
        defaults = {k: canonical(k, v) for k, v in real["defaults"].items() if v is not None}
        predicted = boot_values(layout, list(KEYS), defaults)
        winners = predict(layout, list(KEYS), init)
        for key in KEYS:
            want = predicted[key][init]["value"]
            got = real["values"][key]
            if _meaning(key, want) != _meaning(key, got):
                winner = winners.get(key)
                problems.append(
                    "%s: %s under %s: predicted %r (%s), real %r (namespace default %r)%s" % (
                        label, key, init, want, winner.where() if winner else "no file sets it",
                        got, real["defaults"][key],
                        "; tool stderr: %s" % real["stderr"].strip() if real["stderr"].strip() else ""))
            if expect and key in expect.get(init, {}) and _meaning(key, expect[init][key]) != _meaning(key, got):
                problems.append("%s: %s under %s: the scenario expects %r, the real tool left %r" % (
                    label, key, init, expect[init][key], got))
    if problems:
        problems.append("layout of %s:\n%s" % (label, _show(files, links)))
    return problems


# --------------------------------------------------------------------------- the tests

def test_random_layouts(boot_env):
    """At least 100 random layouts: prediction == systemd-sysctl and procps, key by key."""
    seeds = [BASE_SEED + i for i in range(LAYOUTS)]
    layouts = {seed: generate(seed, boot_env["dirs"], boot_env["sysctl_conf"]) for seed in seeds}
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        replies = dict(zip(seeds, pool.map(lambda s: _apply(*layouts[s]), seeds)))
    failed = {}
    for seed in seeds:
        problems = compare("seed %d" % seed, *layouts[seed], replies[seed])
        if problems:
            failed[seed] = problems
    if failed:
        shown = sorted(failed)[:5]
        pytest.fail(
            "%d of %d layouts mismatch (seeds %s); rerun one with TCPSTACK_DIFF_SEED=<seed> "
            "TCPSTACK_DIFF_LAYOUTS=1\n\n%s" % (
                len(failed), len(seeds), sorted(failed),
                "\n\n".join("\n".join(failed[s]) for s in shown)),
            pytrace=False)


E = "/etc/sysctl.d/"
RUN = "/run/sysctl.d/"
LOCAL = "/usr/local/lib/sysctl.d/"
USR = "/usr/lib/sysctl.d/"


def BOTH(values):  # noqa: N802 - reads like a constant in the table below
    return {"systemd": values, "procps": values}


# (id, files, links, what both tools must really leave: documents each scenario)
FIXED = [
    ("etc-hides-usr-lib-same-name",
     {E + "50-x.conf": "%s = 10\n" % FIN, USR + "50-x.conf": "%s = 20\n%s = 2000 3001\n" % (FIN, RANGE)},
     {}, BOTH({FIN: "10", RANGE: "32768 60999"})),
    ("etc-hides-run-same-name",
     {E + "60-tcpstack-tuning.conf": "%s = 10\n" % FIN, RUN + "60-tcpstack-tuning.conf": "%s = 30\n" % FIN},
     {}, BOTH({FIN: "10"})),
    ("run-hides-usr-local-hides-usr-lib",
     {RUN + "50-x.conf": "%s = 31\n" % FIN, LOCAL + "50-x.conf": "%s = 41\n%s = 1\n" % (FIN, TW_REUSE),
      LOCAL + "60-tcpstack-tuning.conf": "%s = 0\n" % TW_REUSE, USR + "60-tcpstack-tuning.conf": "%s = 1\n" % TW_REUSE},
     {}, BOTH({FIN: "31", TW_REUSE: "0"})),
    ("file-name-order-across-directories",
     {USR + "99-zz.conf": "%s = 40\n" % FIN, E + "10-a.conf": "%s = 10\n%s = 0\n" % (FIN, STAMPS),
      E + "99-Z.conf": "%s = 2\n" % STAMPS, RUN + "99-zz.conf.disabled": "%s = 1\n" % STAMPS},
     {}, BOTH({FIN: "40", STAMPS: "2"})),
    ("sysctl.conf-overrides-99-zz-under-procps-only",
     {SYSCTL_CONF: "%s = 13\n%s = 100\n" % (FIN, SOMAXCONN), USR + "99-zz.conf": "%s = 12\n" % FIN},
     {}, {"systemd": {FIN: "12", SOMAXCONN: "4096"}, "procps": {FIN: "13", SOMAXCONN: "100"}}),
    ("debian-99-sysctl.conf-symlink",
     {SYSCTL_CONF: "%s = 13\n%s = 100\n" % (FIN, SOMAXCONN), E + "99-zz.conf": "%s = 12\n" % FIN},
     {E + "99-sysctl.conf": "../sysctl.conf"},
     {"systemd": {FIN: "12", SOMAXCONN: "100"}, "procps": {FIN: "13", SOMAXCONN: "100"}}),
    ("debian-symlink-hides-usr-lib-99-sysctl.conf",
     {SYSCTL_CONF: "%s = 13\n" % FIN, USR + "99-sysctl.conf": "%s = 14\n%s = 1\n" % (FIN, TW_REUSE)},
     {E + "99-sysctl.conf": "../sysctl.conf"}, BOTH({FIN: "13", TW_REUSE: "2"})),
    ("masked-by-dev-null",
     {USR + "50-x.conf": "%s = 12\n" % FIN, USR + "10-a.conf": "%s = 5\n" % FIN},
     {E + "50-x.conf": "/dev/null"}, BOTH({FIN: "5"})),
    ("empty-reserved-ports-clears",
     {E + "10-a.conf": "%s = 40000-40010\n" % RESERVED, USR + "50-x.conf": "%s =\n" % RESERVED},
     {}, BOTH({RESERVED: ""})),
    ("same-key-twice-slashes-dash-whitespace",
     {E + "10-a.conf": "# c\n; c\n\n-net/ipv4/tcp_fin_timeout\t=\t 7 \n%s=8\n \t%s = 1024\t \t65000 \n"
                       "-%s=40500,40010-40019,40015-40021\n" % (FIN, RANGE, RESERVED)},
     {}, BOTH({FIN: "8", RANGE: "1024 65000", RESERVED: "40010-40021,40500"})),
    ("filtered-out-keys-stay",
     {E + "10-a.conf": "net.ipv4.tcp_syn_retries = 2\nnet/ipv4/ip_default_ttl = 99\n%s = 77\n" % TW_DELAY},
     {}, None),
    # ---- forms each tool (or the kernel) reads its own way; this test found them
    ("dash-space-before-key",  # procps keeps the blank in the key and fails; systemd strips it
     {E + "10-a.conf": "- %s = 9\n" % FIN}, {}, {"systemd": {FIN: "9"}, "procps": {FIN: "60"}}),
    ("hidden-file-names",  # systemd skips dot files; procps reads them
     {E + ".hidden.conf": "%s = 11\n" % FIN, E + ".conf": "%s = 2000 3001\n" % RANGE}, {},
     {"systemd": {FIN: "60", RANGE: "32768 60999"}, "procps": {FIN: "11", RANGE: "2000 3001"}}),
    ("inline-comment-after-value",  # the kernel reads the first number and ignores the rest
     {E + "10-a.conf": "%s = 5 # five\n%s = 2000 3001 ; c\n" % (FIN, RANGE)}, {},
     BOTH({FIN: "5", RANGE: "2000 3001"})),
    ("leading-zero-is-octal",  # the kernel parses numbers with base 0: 010 is 8
     {E + "10-a.conf": "%s = 010\n%s = 02000 03001\n%s = 040010\n" % (FIN, RANGE, RESERVED)}, {},
     BOTH({FIN: "8", RANGE: "1024 1537", RESERVED: "16392"})),
    ("reserved-ports-trailing-comma",  # the kernel accepts "40010-40019,"
     {E + "10-a.conf": "%s = 40010-40019,\n" % RESERVED}, {}, BOTH({RESERVED: "40010-40019"})),
    ("dash-key-without-value",  # systemd 252 drops the earlier assignment; procps ignores the line
     {E + "10-a.conf": "%s = 5\n-%s\n" % (FIN, FIN)}, {}, {"systemd": {FIN: "60"}, "procps": {FIN: "5"}}),
    ("systemd-writes-only-the-last-assignment",  # rejected last value: systemd keeps the default
     {E + "10-a.conf": "%s = 7\n%s = abc\n" % (FIN, FIN)}, {}, {"systemd": {FIN: "60"}, "procps": {FIN: "7"}}),
]


@pytest.mark.parametrize("name,files,links,expect", FIXED, ids=[case[0] for case in FIXED])
def test_fixed_layouts(boot_env, name, files, links, expect):
    unusable = [p for p in list(files) + list(links)
                if p != SYSCTL_CONF and posixpath.dirname(p) not in boot_env["dirs"]]
    if SYSCTL_CONF in files and not boot_env["sysctl_conf"]:
        unusable.append(SYSCTL_CONF)
    need(not unusable, "this machine cannot cover %s" % unusable)
    problems = compare(name, files, links, _apply(files, links), expect)
    assert not problems, "\n".join(problems)
