"""The fleet report's rollup by shared egress (fleet_egress): sums, each kind's limit and sizing, validation,
rendering, and the action's reading of tcpstack_egress from hostvars (issue 23)."""

from __future__ import annotations

import html
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ansible_collections.tcpstack.tuning.plugins.action.fleet_report import Refused, _egresses
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import fleet_egress as fe
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import fleet_report as fr

DEST, OTHER = "203.0.113.9:443", "198.51.100.7:5432"


def result(*destinations, processes=None, thresholds=(70, 90)):
    """A port_usage_info result: destinations as (endpoint, in_use, time_wait[, processes])."""
    out = {"verdict": "ok", "destinations": [], "thresholds": {"warning_percent": thresholds[0],
                                                               "critical_percent": thresholds[1]}}
    for item in destinations:
        dest = {"endpoint": item[0], "in_use": item[1], "time_wait": item[2]}
        if len(item) > 3:
            dest["processes"] = item[3]
        out["destinations"].append(dest)
    if processes is not None:
        out["processes"] = processes
    return out


def nat_result(*egress):
    """A NAT host's result with the nat section of the contract: (address, destination, in_use, capacity, sources)."""
    return {"verdict": "ok", "destinations": [], "nat": {"egress": [
        {"address": a, "destination": d, "protocol": "tcp", "in_use": n, "capacity": c,
         "utilisation": float(n) / c, "sources": [{"address": s, "in_use": k, "share": float(k) / n} for s, k in src]}
        for a, d, n, c, src in egress]}}


def roll(egresses, host_egress, results, inventory=None):
    checked = fe.check_egresses(egresses, host_egress, inventory if inventory is not None else list(results))
    return fe.rollup(checked, host_egress, results)


def one(entries, egress, destination=DEST):
    (found,) = [e for e in entries if e["egress"] == egress and e["destination"] == destination]
    return found


# ------------------------------------------------------------------ sums
def test_sums_open_connections_per_egress_and_destination():
    results = {"a1": result((DEST, 300, 10), (OTHER, 5, 5)), "a2": result((DEST, 200, 0), (OTHER, 7, 0)),
               "b1": result((DEST, 1000, 0))}
    host_egress = {"a1": "nat-a", "a2": "nat-a", "b1": None}
    entries = roll({"nat-a": {"kind": "aws_nat_gateway", "addresses": 1}}, host_egress, results)
    assert {(e["egress"], e["destination"]) for e in entries} == {("nat-a", DEST), ("nat-a", OTHER)}
    top = one(entries, "nat-a")
    assert top["in_use"] == 290 + 200 and top["time_wait"] == 10  # TIME_WAIT is not a concurrent connection
    assert [(h["host"], h["in_use"]) for h in top["hosts"]] == [("a1", 290), ("a2", 200)]  # b1 names no egress
    assert top["busiest"] == {"host": "a1", "in_use": 290}
    assert one(entries, "nat-a", OTHER)["in_use"] == 7


def test_no_host_naming_an_egress_gives_no_entries_and_no_report_key():
    results = {"a1": result((DEST, 300, 0))}
    assert roll({"nat-a": {"kind": "aws_nat_gateway", "addresses": 1}}, {"a1": None}, results) == []
    report = fr.build_report([fr.host_row("a1", "linux", results["a1"])], "now", egresses=[])
    assert "egresses" not in report
    assert "Shared egress" not in fr.render_markdown(report) and "egresses" not in fr.render_html(report)


def test_failed_or_odd_results_count_nothing():
    results = {"a1": {"failed": True, "msg": "x"}, "a2": result((DEST, "many", 0), (DEST + "x", 5, 99)),
               "a3": None}
    entries = roll({"n": {"kind": "aws_nat_gateway", "addresses": 1}}, {"a1": "n", "a2": "n", "a3": "n"}, results)
    assert one(entries, "n")["in_use"] == 0
    assert one(entries, "n", DEST + "x")["in_use"] == 0  # time_wait above in_use is clamped, never negative


def test_processes_behind_the_peak_are_named():
    procs = [{"pid": 42, "name": "python3", "in_use": 250}, {"pid": 7, "name": "curl", "in_use": 40}]
    extra = [{"pid": 9, "name": "java", "destinations": [{"endpoint": DEST, "in_use": 10}]}]
    results = {"a1": result((DEST, 300, 0, procs), processes=extra)}
    entry = one(roll({"n": {"kind": "aws_nat_gateway", "addresses": 1}}, {"a1": "n"}, results), "n")
    assert [p["pid"] for p in entry["hosts"][0]["processes"]] == [42, 7, 9]
    assert fe.hosts_text(entry) == "a1 300 (python3 pid 42 250, curl pid 7 40, java pid 9 10)"


# ------------------------------------------------------------------ each kind's limit and sizing
def test_aws_limit_and_sizing():
    results = {"h%d" % i: result((DEST, 20000, 0)) for i in range(4)}  # 80,000 to one destination
    entry = one(roll({"n": {"kind": "aws_nat_gateway", "addresses": 1}}, dict.fromkeys(results, "n"), results), "n")
    assert entry["capacity"] == 55000 and entry["utilisation"] == pytest.approx(80000 / 55000.0)
    assert entry["severity"] == "critical" and entry["limit"] == "per_egress"
    assert entry["sizing"]["addresses_needed"] == 3  # 120,000 / 55,000
    assert entry["sizing"]["sentences"] == [
        "80,000 concurrent connections to 203.0.113.9:443 at the peak; with a 1.5x margin (120,000) the egress "
        "needs 3 address(es) at 55,000 per address to one destination; 1 declared; source: AWS VPC user guide, "
        "\"NAT gateway basics\"."]
    entry = one(roll({"n": {"kind": "aws_nat_gateway", "addresses": 8}}, {"h0": "n"},
                     {"h0": result((DEST, 300000, 0))}), "n")
    assert entry["sizing"]["addresses_needed"] == 9 and "more than the 8 an AWS NAT gateway can have" in \
        entry["sizing"]["sentences"][0]


def test_azure_nat_gateway_limit_and_sizing():
    results = {"h": result((DEST, 40000, 100))}
    entry = one(roll({"n": {"kind": "azure_nat_gateway", "addresses": 1}}, {"h": "n"}, results), "n")
    assert entry["capacity"] == 50000 and entry["severity"] == "warning"  # 79.8% of 50,000
    assert entry["sizing"]["addresses_needed"] == 2  # 59,850 / 50,000
    assert "2 public IP address(es) at 50,000 per address" in entry["sizing"]["sentences"][0]
    assert entry["sizing"]["sentences"][0].endswith("source: Azure NAT Gateway documentation on SNAT.")


def test_azure_lb_limit_by_pool_size_and_allocated_outbound_ports():
    assert [fe.azure_lb_default_ports(n) for n in (1, 50, 51, 100, 200, 400, 800, 801, 1000)] == \
        [1024, 1024, 512, 512, 256, 128, 64, 32, 32]
    assert [fe.azure_lb_default_ports(100, n) for n in (1, 2, 3)] == [512, 1024, 1024]  # per frontend IP, <= 1,024
    assert fe.azure_lb_default_ports(1000, 4) == 128
    results = {"vm1": result((DEST, 400, 0)), "vm2": result((DEST, 100, 0))}
    egresses = {"lb": {"kind": "azure_lb", "addresses": 1, "pool_size": 60}}
    entry = one(roll(egresses, dict.fromkeys(results, "lb"), results), "lb")
    assert entry["capacity"] == 512 and entry["limit"] == "per_vm"
    assert entry["utilisation"] == pytest.approx(400 / 512.0) and entry["severity"] == "warning"
    assert entry["sizing"]["allocated_outbound_ports"] == 600
    assert entry["sizing"]["sentences"][0] == (
        "The busiest VM, vm1, holds 400 concurrent connections to 203.0.113.9:443; with a 1.5x margin set "
        "allocatedOutboundPorts to at least 600 (now 512 per VM per destination); source: azure-docs "
        "load-balancer-outbound-connections.md.")
    assert entry["sizing"]["addresses_needed"] == 1 and "60 VM(s) x 600 ports need 1 frontend IP(s)" in \
        entry["sizing"]["sentences"][1]
    egresses = {"lb": {"kind": "azure_lb", "addresses": 2, "ports_per_instance": 2000}}
    assert one(roll(egresses, dict.fromkeys(results, "lb"), results), "lb")["capacity"] == 2000


def test_gcp_limit_and_min_ports_per_vm():
    results = {"g1": result((DEST, 120, 3)), "g2": result((DEST, 40, 0))}
    entry = one(roll({"g": {"kind": "gcp_cloud_nat", "addresses": 1}}, dict.fromkeys(results, "g"), results), "g")
    assert entry["capacity"] == 64 and entry["in_use"] == 117 + 40 and entry["busiest"]["host"] == "g1"
    assert entry["severity"] == "critical" and entry["sizing"]["min_ports_per_vm"] == 176  # ceil(117 x 1.5)
    assert entry["sizing"]["sentences"] == [
        "The busiest VM, g1, holds 117 concurrent connections to 203.0.113.9:443; with a 1.5x margin set "
        "min_ports_per_vm to at least 176 (now 64 per VM per destination); source: Google Cloud NAT documentation "
        "(ports and addresses).",
        "2 VM(s) x 176 ports need 1 NAT IP(s) (64,512 ports each); 1 declared; source: Google Cloud NAT "
        "documentation (ports and addresses)."]
    entry = one(roll({"g": {"kind": "gcp_cloud_nat", "addresses": 1, "ports_per_vm": 4096}},
                     dict.fromkeys(results, "g"), results), "g")
    assert entry["capacity"] == 4096 and entry["severity"] == "ok"


def test_linux_egress_uses_the_nat_hosts_measurement():
    results = {"c1": result((DEST, 600, 0)), "c2": result((DEST, 300, 0)),
               "router": nat_result(("10.9.0.1", DEST, 700, 1000, [("10.1.0.11", 500), ("10.1.0.12", 200)]),
                                    ("10.9.0.2", DEST, 200, 1000, [("10.1.0.12", 200)]),
                                    ("10.9.0.1", OTHER, 10, 64512, [("10.1.0.11", 10)]))}
    egresses = {"gw": {"kind": "linux", "host": "router"}}
    entries = roll(egresses, {"c1": "gw", "c2": "gw", "router": None}, results)
    entry = one(entries, "gw")
    assert entry["in_use"] == 900 and entry["capacity"] == 2000 and entry["utilisation"] == pytest.approx(0.7)
    assert entry["severity"] == "warning"  # the busiest translated address holds 70% of its range
    assert entry["sources"] == [{"address": "10.1.0.11", "in_use": 500}, {"address": "10.1.0.12", "in_use": 400}]
    assert [h["host"] for h in entry["hosts"]] == ["c1", "c2"]
    assert entry["notes"] == ["measured on the NAT host router; the hosts behind it hold 900"]
    assert entry["sizing"]["addresses_needed"] == 2  # 1,350 over 1,000 translated ports per address
    assert "translated address(es) (or a wider translated port range)" in entry["sizing"]["sentences"][0]
    assert one(entries, "gw", OTHER)["in_use"] == 10  # a destination only the NAT host saw


def test_linux_egress_reads_port_usage_infos_nat_section_as_built():
    """The shape port_usage_info's nat section has (translated, destination address, port, endpoint with /tcp)."""
    item = {"translated": "10.231.2.1", "destination": "10.231.2.2", "port": 8080, "protocol": "tcp",
            "endpoint": "10.231.2.2:8080/tcp", "in_use": 1000, "live": 1000, "time_wait": 0, "capacity": 1000,
            "port_range": [20000, 20999], "capacity_source": "nftables", "utilisation": 1.0, "verdict": "critical",
            "sources": [{"address": "10.231.1.11", "in_use": 1000, "time_wait": 0, "share": 1.0}],
            "sources_total": 1}
    six = dict(item, destination="fd00::2", endpoint="[fd00::2]:8080/tcp", in_use=5)
    results = {"c1": result(("10.231.2.2:8080", 1000, 0)), "gw": {"nat": {"counted": "live", "egress": [item, six]}}}
    entries = roll({"gw": {"kind": "linux", "host": "gw"}}, {"c1": "gw"}, results)
    entry = one(entries, "gw", "10.231.2.2:8080")
    assert entry["in_use"] == 1000 and entry["capacity"] == 1000 and entry["severity"] == "critical"
    assert [h["host"] for h in entry["hosts"]] == ["c1"] and entry["sources"][0]["address"] == "10.231.1.11"
    assert one(entries, "gw", "[fd00::2]:8080")["in_use"] == 5


def test_linux_egress_without_a_nat_section_is_unknown():
    results = {"c1": result((DEST, 600, 0)), "router": {"verdict": "ok", "destinations": []}}
    entry = one(roll({"gw": {"kind": "linux", "host": "router"}}, {"c1": "gw"}, results), "gw")
    assert entry["severity"] == "unknown" and entry["capacity"] is None and entry["in_use"] == 600
    assert entry["notes"] == ["the NAT host router reported no nat section for this destination"]


def test_severity_uses_the_audits_thresholds():
    results = {"h": result((DEST, 30000, 0), thresholds=(50, 60))}  # 54.5% of 55,000
    entry = one(roll({"n": {"kind": "aws_nat_gateway", "addresses": 1}}, {"h": "n"}, results), "n")
    assert entry["severity"] == "warning"
    assert fe.severity(0.95, (70, 90)) == "critical" and fe.severity(0.1, (70, 90)) == "ok"


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("egresses, host_egress, message", [
    ("aws", {}, "port_audit_egresses is 'aws'; it must be a dict"),
    ({"n": {"kind": "aws"}}, {}, "port_audit_egresses: n.kind is 'aws'; it must be one of linux, aws_nat_gateway"),
    ({"n": {"kind": "aws_nat_gateway"}}, {}, "port_audit_egresses: n.addresses is None; it must be a whole number"),
    ({"n": {"kind": "aws_nat_gateway", "addresses": 0}}, {}, "n.addresses is 0; it must be a whole number from 1 to 8"),
    ({"n": {"kind": "aws_nat_gateway", "addresses": 9}}, {}, "n.addresses is 9; it must be a whole number from 1 to 8"),
    ({"n": {"kind": "azure_nat_gateway", "addresses": True}}, {}, "n.addresses is True"),
    ({"n": {"kind": "gcp_cloud_nat", "addresses": 1, "ports_per_vm": -64}}, {}, "n.ports_per_vm is -64"),
    ({"n": {"kind": "azure_lb", "addresses": 1}}, {}, "needs ports_per_instance"),
    ({"n": {"kind": "azure_lb", "addresses": 1, "pool_size": 1001}}, {}, "n.pool_size is 1001"),
    ({"n": {"kind": "aws_nat_gateway", "addresses": 1, "ports_per_vm": 64}}, {},
     "n has ports_per_vm, not a key of kind aws_nat_gateway (valid: kind, addresses)"),
    ({"n": {"kind": "linux"}}, {}, "n.host is None; a linux egress names its NAT host, an inventory host"),
    ({"n": {"kind": "linux", "host": "nowhere"}}, {}, "n.host is 'nowhere'"),
    ({"n": {"kind": "aws_nat_gateway", "addresses": 1}}, {"web1": "m"},
     "tcpstack_egress of host web1 is 'm'; it must name an egress declared in port_audit_egresses (declared: n)"),
    ({}, {"web1": 3}, "tcpstack_egress of host web1 is 3; it must name an egress declared in port_audit_egresses "
                      "(declared: none)"),
])
def test_validation_names_the_variable_the_value_and_what_is_valid(egresses, host_egress, message):
    with pytest.raises(fe.EgressError) as caught:
        fe.check_egresses(egresses, host_egress, ["web1", "router"])
    assert message in str(caught.value)


def test_the_action_refuses_before_writing_and_reads_hostvars(tmp_path):
    hostvars = {"a1": {"tcpstack_egress": "nat-a"}, "a2": {"tcpstack_egress": "nat-b"}, "router": {}}
    gathered = {"a1": result((DEST, 10, 0)), "a2": result((DEST, 5, 0))}
    with pytest.raises(Refused, match="tcpstack_egress of host a2 is 'nat-b'"):
        _egresses({"egresses": {"nat-a": {"kind": "aws_nat_gateway", "addresses": 1}}}, {"hostvars": hostvars},
                  gathered)
    hostvars["a2"]["tcpstack_egress"] = "gw"
    hostvars["router"]["port_audit_result"] = nat_result(("10.9.0.1", DEST, 5, 100, [("10.1.0.12", 5)]))
    entries = _egresses({"egresses": {"nat-a": {"kind": "aws_nat_gateway", "addresses": 1},
                                      "gw": {"kind": "linux", "host": "router"}}}, {"hostvars": hostvars}, gathered)
    assert {(e["egress"], e["in_use"], e["capacity"]) for e in entries} == {("nat-a", 10, 55000), ("gw", 5, 100)}
    assert _egresses({}, {"hostvars": {"a1": {}}}, {"a1": gathered["a1"]}) == []


# ------------------------------------------------------------------ rendering
def hostile_report():
    name = '<script>alert(1)</script>|*_'
    results = {"h1": result((DEST, 60, 0, [{"pid": 1, "name": "<b>evil</b>\x1b[2J", "in_use": 60}])),
               "h2": result((DEST, 10, 0))}
    entries = roll({name: {"kind": "gcp_cloud_nat", "addresses": 1}}, dict.fromkeys(results, name), results)
    rows = [fr.host_row(h, "linux", r) for h, r in results.items()]
    return fr.build_report(rows, "2026-12-07 19:00:00 UTC", egresses=entries), name


def test_json_markdown_html_and_summary_carry_the_egress_section():
    report, name = hostile_report()
    data = json.loads(fr.render_json(report))
    (entry,) = data["egresses"]
    assert entry["egress"] == name and entry["in_use"] == 70 and entry["capacity"] == 64
    assert entry["severity"] == "critical" and entry["sizing"]["min_ports_per_vm"] == 90
    markdown = fr.render_markdown(report)
    assert "## Shared egress" in markdown and "<script>" not in markdown and "<b>" not in markdown
    assert "\\_cloud\\_nat" in markdown
    page = fr.render_html(report)
    assert '<table id="egresses">' in page and "<script>alert" not in page and "<b>evil" not in page
    assert 'data-egress="%s"' % html.escape(name, quote=True) in page
    summary = fr.render_summary(report).splitlines()
    (line,) = [s for s in summary if s.startswith("egress ")]
    assert "CRITICAL, 60 of 64 per VM (93.7%), busiest h1; The busiest VM, h1, holds 60" in line
    assert "\x1b" not in "\n".join(summary)


def test_summary_lists_only_egresses_at_risk():
    results = {"h": result((DEST, 10, 0))}
    entries = roll({"n": {"kind": "aws_nat_gateway", "addresses": 1}}, {"h": "n"}, results)
    assert entries[0]["severity"] == "ok" and fe.summary_lines(entries) == []


# ------------------------------------------------------------------ hostile results
VALUES = hs.one_of(hs.none(), hs.booleans(), hs.integers(-5, 10 ** 20), hs.floats(allow_nan=True), hs.text(max_size=8),
                   hs.just(DEST))
DESTINATION = hs.fixed_dictionaries({}, optional={"endpoint": VALUES, "in_use": VALUES, "time_wait": VALUES,
                                                  "processes": hs.lists(hs.dictionaries(hs.sampled_from(
                                                      ["pid", "name", "in_use"]), VALUES), max_size=3)})
NAT_ITEM = hs.fixed_dictionaries({}, optional={"destination": VALUES, "protocol": VALUES, "in_use": VALUES,
                                               "capacity": VALUES, "sources": hs.lists(hs.dictionaries(
                                                   hs.sampled_from(["address", "in_use"]), VALUES), max_size=3)})


@settings(max_examples=150, deadline=None)
@given(hs.lists(DESTINATION, max_size=4), hs.lists(NAT_ITEM, max_size=4), VALUES)
def test_hostile_results_never_raise_and_render_strict_json(destinations, nat, thresholds):
    results = {"h1": {"destinations": destinations, "thresholds": {"warning_percent": thresholds}},
               "h2": {"destinations": destinations[::-1], "processes": [{"pid": 1, "destinations": destinations}]},
               "gw": {"nat": {"egress": nat}}}
    egresses = {"n": {"kind": "gcp_cloud_nat", "addresses": 1}, "l": {"kind": "linux", "host": "gw"},
                "a": {"kind": "aws_nat_gateway", "addresses": 1}}
    entries = roll(egresses, {"h1": "n", "h2": "l", "gw": "a"}, results)
    report = fr.build_report([], "now", egresses=entries)
    json.loads(fr.render_json(report))
    fr.render_markdown(report), fr.render_html(report), fr.render_summary(report)
    assert all(e["in_use"] >= 0 and e["severity"] in fe.SEVERITIES for e in entries)
