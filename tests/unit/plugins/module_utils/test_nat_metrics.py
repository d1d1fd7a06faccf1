"""The nat section as Prometheus metrics (issue 23 item 4): prometheus.render() and the sampler's --nat option."""

from __future__ import annotations

import shutil
import subprocess

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_monitor import sample
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_monitor_service import parse_args
from ansible_collections.tcpstack.tuning.plugins.module_utils.prometheus import render

from tests.support.ci import need
from tests.support.promql import exposed_names, samples

BASE = {"verdict": "critical", "thresholds": {"warning_percent": 70, "critical_percent": 90},
        "ephemeral": {"range": [32768, 60999], "reserved_in_range": 0, "usable": 28232}}


def egress(number, **more):
    entry = {"translated": "10.231.2.1", "destination": "10.231.2.%d" % number, "port": 8080, "protocol": "tcp",
             "endpoint": "10.231.2.%d:8080/tcp" % number, "in_use": 1000 - number, "live": 1000 - number,
             "time_wait": number, "capacity": 1000, "port_range": [20000, 20999], "capacity_source": "nftables",
             "utilisation": (1000 - number) / 1000.0, "verdict": "critical", "sources": [], "sources_total": 0}
    entry.update(more)
    return entry


NAT = {"source": "ctnetlink", "kernel": "6.18.0", "counted": "live",
       "conntrack": {"count": 1012, "max": 262144, "utilisation": 0.0039, "per_second": {"insert_failed": 2.5},
                     "sample_seconds": 3.0, "cpus": 2,
                     "counters": {"found": 9, "insert": 1012, "insert_failed": 101, "drop": 102, "early_drop": 0,
                                  "clash_resolve": 3}},
       "entries": 1012, "snat_entries": 1000, "egress_total": 7,
       "egress": [egress(n) for n in range(2, 9)], "rules": [], "verdict": "critical", "findings": [],
       "recommendations": [], "notes": []}


def text_of(nat, top=5):
    return render(dict(BASE, nat=nat), top=top, duration_seconds=0.1, timestamp=1.0, interval_seconds=15)


def test_the_table_its_counters_and_the_verdict():
    text = text_of(NAT)
    assert samples(text, "tcpstack_conntrack_entries") == [({}, 1012.0)]
    assert samples(text, "tcpstack_conntrack_max") == [({}, 262144.0)]
    assert samples(text, "tcpstack_conntrack_utilisation_ratio") == [({}, 0.0039)]
    # the kernel's cumulative counters are counters (rate() in the rules), not the sample's per-second change
    for name, value in (("insert_failed", 101.0), ("drop", 102.0), ("early_drop", 0.0), ("clash_resolve", 3.0)):
        assert samples(text, "tcpstack_conntrack_%s_total" % name) == [({}, value)], name
        assert "# TYPE tcpstack_conntrack_%s_total counter" % name in text
    assert samples(text, "tcpstack_nat_verdict") == [({}, 2.0)]
    assert samples(text, "tcpstack_nat_egress_keys") == [({}, 7.0)]
    assert "tcpstack_conntrack_found" not in text and "tcpstack_conntrack_insert_total" not in text


def test_egress_keys_are_bounded_by_top_and_labelled_by_translated_destination_protocol():
    text = text_of(NAT, top=3)
    in_use = samples(text, "tcpstack_nat_egress_in_use")
    assert in_use == [({"destination": "10.231.2.%d:8080" % n, "protocol": "tcp", "translated": "10.231.2.1"},
                       float(1000 - n)) for n in (2, 3, 4)]
    assert [value for dummy, value in samples(text, "tcpstack_nat_egress_capacity")] == [1000.0] * 3
    assert [value for dummy, value in samples(text, "tcpstack_nat_egress_utilisation_ratio")] == [0.998, 0.997, 0.996]
    assert [value for dummy, value in samples(text, "tcpstack_nat_egress_time_wait")] == [2.0, 3.0, 4.0]


def test_an_ipv6_destination_is_bracketed_and_odd_label_text_is_escaped():
    nat = dict(NAT, egress=[egress(1, destination="2001:db8::2", port=443, translated='a"b\\c\nd')])
    labels = samples(text_of(nat), "tcpstack_nat_egress_in_use")[0][0]
    assert labels["destination"] == "[2001:db8::2]:443"
    assert labels["translated"] == 'a\\"b\\\\c\\nd'  # as written in the text: escaped


def test_a_host_without_nat_or_with_an_unreadable_table_gets_no_figure_it_does_not_have():
    assert not any(name.startswith(("tcpstack_nat_", "tcpstack_conntrack_")) for name in exposed_names(
        render(BASE, top=5)))
    text = text_of(dict(NAT, conntrack=None, egress=[], egress_total=None, source=None, verdict="ok"))
    assert {name for name in exposed_names(text) if name.startswith(("tcpstack_nat_", "tcpstack_conntrack_"))} == {
        "tcpstack_nat_verdict"}


def test_promtool_accepts_the_nat_families():
    tool = shutil.which("promtool")
    need(tool is not None, "needs promtool (Debian package prometheus)")
    done = subprocess.run([tool, "check", "metrics"], input=text_of(NAT), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


class SpyHost(LinuxHost):
    """This machine's LinuxHost, recording the NAT calls it is asked for (it still does them)."""

    def __init__(self):
        super().__init__()
        self.nat_calls = []

    def conntrack_loaded(self):
        self.nat_calls.append("conntrack_loaded")
        return super().conntrack_loaded()

    def nft_ruleset(self):
        self.nat_calls.append("nft_ruleset")
        return super().nft_ruleset()

    def iptables_nat_rules(self):
        self.nat_calls.append("iptables_nat_rules")
        return super().iptables_nat_rules()


def test_without_nat_the_sampler_never_looks_at_conntrack_or_runs_nft(tmp_path):
    options = parse_args(["--directory", str(tmp_path)])
    assert options.nat is False
    host = SpyHost()
    text = sample(options, host)
    assert host.nat_calls == [] and "tcpstack_verdict" in text
    options = parse_args(["--directory", str(tmp_path), "--nat"])
    assert options.nat is True
    host = SpyHost()
    sample(options, host)
    assert host.nat_calls[:1] == ["conntrack_loaded"]
