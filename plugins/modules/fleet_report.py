#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# This file only documents the module; the code is the action plugin plugins/action/fleet_report.py,
# which runs on the controller; the rendering is plugins/plugin_utils/fleet_report.py.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_report
short_description: Gather the port audits of a fleet into one report on the controller (JSON, Markdown, HTML)
version_added: "0.1.0"
description:
  - Reads the result of M(tcpstack.tuning.port_usage_info) or M(tcpstack.tuning.win_port_usage_info) of every host
    of the play from a host variable, ranks the hosts riskiest first (critical, warning, unknown, ok; then by
    utilisation) and writes one report in the formats asked, then prints a short summary table.
  - "Runs on the controller only and never contacts a host. Use it with C(run_once: true). The role
    C(tcpstack.tuning.port_audit) does all of this."
  - The HTML page is self-contained (inline CSS, no script, no external asset); every value in the HTML and
    Markdown is escaped, so a host name or a finding holding markup shows as text.
  - A host with no result (unreachable, or its audit failed) is listed with verdict V(unknown).
  - The report (and, with O(metrics_dir) or O(pushgateway_url), the metrics) is written in check mode too (it is
    the output of a read-only audit); the task never reports a change.
author:
  - tcpstack.tuning contributors (@tcpstack)
options:
  hosts:
    description: The hosts to report on. Default the play's hosts (C(ansible_play_hosts_all)), failed ones included.
    type: list
    elements: str
  result_var:
    description:
      - The host variable holding each host's info module result, with a key C(platform) (V(linux) or V(windows))
        added.
    type: str
    default: port_audit_result
  error_vars:
    description:
      - Host variables holding registered results of the info modules. For a host without O(result_var), the message
        of the first of them that failed or was unreachable becomes the row's C(error).
    type: list
    elements: str
    default: []
  results:
    description:
      - "Instead of O(hosts) and O(result_var), the results themselves, C({host: result}) (each with C(platform))."
    type: dict
  dest:
    description:
      - The directory to write the report to, created when missing. A relative path is relative to the directory
        C(ansible-playbook) runs in. The files are C(port_audit.json), C(port_audit.md) and C(port_audit.html).
    type: path
    default: port_audit_report
  formats:
    description: The formats to write; an empty list writes nothing (the summary is still printed and returned).
    type: list
    elements: str
    choices: [json, markdown, html]
    default: [json, markdown, html]
  title:
    description: The report's title.
    type: str
    default: Ephemeral-port audit
  fail_on_critical:
    description: Fail (after writing the report) when any host is critical, for a CI gate.
    type: bool
    default: false
  metrics_dir:
    description:
      - An absolute directory on the controller (the textfile directory of its node_exporter) where
        C(tcpstack_port_audit.prom) is replaced atomically, mode 0644, with the C(tcpstack_*) series of the port_monitor
        sampler for every host (the same names, HELP and TYPE), each sample labelled C(instance) (the inventory
        host), C(job=tcpstack_port_audit) and C(tcpstack_source=port_audit); scrape it with C(honor_labels) true.
      - A host that failed or was unreachable gets only C(tcpstack_audit_success) 0 and
        C(tcpstack_sampler_interval_seconds), never a verdict. Unset, no textfile is written.
    type: str
  pushgateway_url:
    description:
      - The http(s) URL of a Prometheus Pushgateway. Each host's series (as for O(metrics_dir), without C(instance)
        and C(job), which the grouping key gives) go in one PUT to C(/metrics/job/tcpstack_port_audit/instance/HOST),
        replacing that host's group, with a timeout of 10 seconds. When a push fails, every other host is still
        pushed, then the task fails naming each host and why (the report and the textfile are written first).
        Unset, nothing is pushed.
    type: str
  interval_seconds:
    description:
      - How often the audit is scheduled, in seconds, 60-604800, written as C(tcpstack_sampler_interval_seconds)
        next to the audit's time (C(tcpstack_sampler_last_success_timestamp_seconds)); the alert
        C(TcpstackSamplerStale) calls a host stale once its last audit is older than two intervals.
    type: int
    default: 900
  egresses:
    description:
      - "The shared egresses, C({name: {kind: ..., ...}}), that hosts name in their inventory variable
        C(tcpstack_egress) (read from hostvars). C(kind) is V(linux) (a managed NAT host of the inventory, named by
        C(host); its own C(nat.egress) measurement is used), V(aws_nat_gateway), V(azure_nat_gateway), V(azure_lb)
        or V(gcp_cloud_nat); a cloud kind needs C(addresses) (public or NAT IPs), V(gcp_cloud_nat) takes
        C(ports_per_vm) (C(min_ports_per_vm), default 64) and V(azure_lb) C(ports_per_instance)
        (C(allocatedOutboundPorts)) or C(pool_size) (default allocation by the documented table)."
      - The report then sums the hosts' open connections (C(in_use) minus C(time_wait)) per egress and destination,
        compares the sum with the kind's documented limit, sizes the egress with a 1.5x margin and names the hosts
        and processes behind the peak (C(egresses) in RV(report)). An unknown kind, a missing or non-positive size
        or a host naming an undeclared egress fails the task before anything is written. See docs/nat.md.
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
    description: Changes no host; the report files are written, and the metrics written and pushed, in check mode too.
  diff_mode:
    support: none
    description: Nothing on a host changes.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller.
seealso:
  - module: tcpstack.tuning.port_usage_info
  - module: tcpstack.tuning.win_port_usage_info
"""

EXAMPLES = r"""
- name: Audit every host (Linux)
  tcpstack.tuning.port_usage_info:
  register: audit

- name: Remember it with its platform
  ansible.builtin.set_fact:
    port_audit_result: "{{ audit | combine({'platform': 'linux'}) }}"

- name: One report for the fleet, failing when a host is critical
  tcpstack.tuning.fleet_report:
    dest: /var/tmp/port_audit
    fail_on_critical: true
  run_once: true

- name: The same, and the hosts' metrics for the controller's node_exporter and a Pushgateway
  tcpstack.tuning.fleet_report:
    dest: /var/tmp/port_audit
    metrics_dir: /var/lib/prometheus/node-exporter
    pushgateway_url: http://pushgateway.example:9091
    interval_seconds: 900
  run_once: true
"""

RETURN = r"""
report:
  description:
    - The report, C(title), C(generated), C(verdict) (the worst), C(counts) per verdict, C(critical) (host names) and
      C(hosts), one row per host riskiest first, with C(host), C(platform), C(verdict), C(utilisation) (0 to 1,
      C(null) when unknown), C(ports_held), C(usable_ports), C(top_destination), C(max_new_connections_per_second),
      C(findings), C(recommendations) and C(error).
    - With O(egresses) and hosts that name one, C(egresses), one entry per egress and destination riskiest
      first, with C(egress), C(kind), C(destination), C(in_use), C(time_wait), C(capacity), C(limit)
      (V(per_egress), or V(per_vm) for V(azure_lb) and V(gcp_cloud_nat)), C(utilisation), C(severity), C(hosts)
      (each C(host), C(in_use), C(time_wait), C(processes)), C(busiest), C(sizing) (C(margin), C(peak),
      C(addresses_needed), C(min_ports_per_vm) or C(allocated_outbound_ports), C(sentences)), C(source) and
      C(notes).
  returned: success
  type: dict
  sample: {"title": "Ephemeral-port audit", "generated": "2026-11-24 10:00:00 UTC", "verdict": "critical",
           "counts": {"critical": 1, "warning": 0, "unknown": 0, "ok": 2}, "critical": ["web1"],
           "hosts": [{"host": "web1", "platform": "linux", "verdict": "critical", "utilisation": 1.0}]}
files:
  description: "The files written, C({format: path})."
  returned: success
  type: dict
  sample: {"json": "/var/tmp/port_audit/port_audit.json", "html": "/var/tmp/port_audit/port_audit.html"}
critical:
  description: The critical hosts.
  returned: success
  type: list
  elements: str
  sample: ["web1"]
verdict:
  description: The fleet's verdict, the worst of its hosts (V(critical), V(warning), V(unknown) or V(ok)).
  returned: success
  type: str
  sample: critical
summary:
  description: The summary table as printed, one line per item.
  returned: success
  type: list
  elements: str
metrics:
  description:
    - What was done with the metrics, C(null) when neither O(metrics_dir) nor O(pushgateway_url) is set.
      C(textfile) (the path written, or C(null)), C(pushed) (the hosts pushed), C(push_errors) (host to why),
      C(audited) (the hosts written with their series) and C(failed) (those written as failed).
  returned: success
  type: dict
  sample: {"textfile": "/var/lib/prometheus/node-exporter/tcpstack_port_audit.prom", "pushed": ["web1", "win1"],
           "push_errors": {}, "audited": ["web1", "win1"], "failed": []}
"""
