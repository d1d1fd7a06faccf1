# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The port-usage rules only Linux has: ``LINUX``, the usage_model.Platform that linux_port_usage hands to
port_usage.analyse().

tcp_tw_reuse (with TCP timestamps) shortens how long a closed port is held;
tcp_max_tw_buckets caps TIME_WAIT; the /proc/net/netstat and /proc/net/snmp
counters tell whether listeners overflow and how fast connections are opened;
``reserve_listening_ports`` (linux_tcp) keeps listening ports out of the range.
Pure, standard library only, Python 3.9+.
"""

from __future__ import annotations

from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import CounterReport, Finding, Platform
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import number, percent

TW_BUCKETS_PERCENT = 90
RISING = ("ListenOverflows", "ListenDrops", "TCPTimeWaitOverflow", "AttemptFails")
OPENS = (("ActiveOpens", "active_opens_per_second"), ("PassiveOpens", "passive_opens_per_second"),
         ("AttemptFails", "attempt_fails_per_second"))


def tw_reuse_remedy(settings):
    """Linux's way to shorten how long a closed port is held: tcp_tw_reuse 1, with TCP timestamps on."""
    remedy = {}
    if settings.get("tw_reuse") != 1:
        remedy["tw_reuse"] = 1
        if not settings.get("timestamps"):
            remedy["timestamps"] = 1
    return remedy


def time_wait_buckets(snap, time_wait):
    """The tcp_max_tw_buckets finding: ``time_wait`` sockets near the cap, beyond which connections close without
    TIME_WAIT."""
    max_tw = snap.settings.get("max_tw_buckets")
    if max_tw and time_wait * 100 >= TW_BUCKETS_PERCENT * max_tw:
        return [Finding("warning", "%s sockets in TIME_WAIT, %s of tcp_max_tw_buckets (%s): beyond it connections "
                                   "close without TIME_WAIT"
                        % (number(time_wait), percent(float(time_wait) / max_tw), number(max_tw)))]
    return []


def counter_changes(before, after, seconds):
    """{name: {"before", "after", "delta", "per_second"}} for counters present in both samples."""
    out = {}
    for name, value in before.items():
        if name in after:
            delta = after[name] - value
            out[name] = {"before": value, "after": after[name], "delta": delta,
                         "per_second": round(delta / seconds, 2) if seconds else None}
    return out


def _sampled(snap):
    """The CounterReport of two samples of the counters, ``sample_seconds`` apart."""
    seconds = snap.sample_seconds or 0
    changes = counter_changes(snap.counters, snap.counters_after, seconds)
    measured = {"seconds": round(seconds, 3)}
    for name, key in OPENS:
        measured[key] = changes[name]["per_second"] if name in changes else None
    findings = [Finding("warning", "%s is rising: +%s in %.1f s" % (name, number(changes[name]["delta"]), seconds))
                for name in RISING if changes.get(name) and changes[name]["delta"] > 0]
    notes = []
    backlog = {}
    if any(changes.get(name, {}).get("delta", 0) > 0 for name in ("ListenOverflows", "ListenDrops")):
        for option in ("somaxconn", "max_syn_backlog"):
            if snap.settings.get(option):
                backlog[option] = max(4096, 2 * snap.settings[option])
        notes.append("a larger somaxconn only helps if the application asks for a larger listen() backlog")
    if changes.get("TCPTimeWaitOverflow", {}).get("delta", 0) > 0:
        notes.append("TCPTimeWaitOverflow rises when tcp_max_tw_buckets is reached (not a linux_tcp option)")
    counters = {"values": dict(snap.counters), "sample": {"seconds": round(seconds, 3), "changes": changes}}
    return CounterReport(counters, measured, tuple(findings), tuple(notes), backlog)


def counter_report(snap):
    """What the kernel's counters say (None: not read); with one sample only, which were ever non-zero."""
    if snap.counters is None:
        return CounterReport()
    if snap.counters_after is not None:
        return _sampled(snap)
    notes = tuple("%s is %s since the network namespace started; sample_seconds shows whether it is rising"
                  % (name, number(snap.counters[name])) for name in RISING[:3] if snap.counters.get(name))
    return CounterReport({"values": dict(snap.counters), "sample": None}, None, (), notes, {})


LINUX = Platform(
    name="linux",
    hold_remedy=lambda snap: tw_reuse_remedy(snap.settings),
    findings=time_wait_buckets,
    counters=counter_report,
    reserve_option="reserve_listening_ports",
)
