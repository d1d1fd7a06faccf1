"""A scheduled audit as AWX/AAP runs it: the audit job, twice, under ansible-runner, pushing to a real Pushgateway.

What an AWX/AAP schedule does at each tick is start the job template's job: ``ansible-runner run`` on a private data
directory (test_ansible_runner.py lays one out as AWX does, with the collection installed from its built artifact).
Here the job template is the project's audit.yml with the extra variables docs/monitoring.md gives for a schedule
(``port_audit_pushgateway_url``, ``port_audit_interval_seconds``); two ticks run it twice.  Asserted through
Debian's Pushgateway and Prometheus (``honor_labels: true``): after each job every host of the inventory
(two Linux namespaces, one simulated Windows host over WinRM) has its series with ``instance="<inventory host>"``
and the job's time; the second tick moves every host's time on; with the shipped TcpstackSamplerStale expression no
host is stale after the second tick and every one is two intervals after it.  The schedule's clock itself (AWX's
rrule) is AWX's, not tested here.
"""

from __future__ import annotations

import os
import time

import pytest
import yaml
# fleet and monitoring are the fixtures these tests use
from test_ansible_runner import (  # noqa: F401  # pylint: disable=unused-import
    BIN,
    LINUX,
    WINDOWS,
    build,
    by_host,
    fleet,
    job_events,
    private_data_dir,
    run_job,
)
from test_audit_metrics import INTERVAL, STALE, by_instance, get, monitoring  # noqa: F401  # pylint: disable=unused-import

from tests.support.prometheus import wait_for

pytestmark = pytest.mark.usefixtures("root_netns")


def test_two_ticks_of_an_awx_schedule_keep_every_host_fresh(fleet, monitoring, tmp_path):  # noqa: F811
    linux, sims = fleet
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env["PATH"] = "%s:%s" % (BIN, env.get("PATH", "/usr/bin:/bin"))
    tarball = build(tmp_path / "dist", env)
    hosts = sorted(LINUX + WINDOWS)
    pdd = tmp_path / "job"
    private_data_dir(pdd, tarball, linux, sims, env)
    (pdd / "env" / "extravars").write_text(yaml.safe_dump({
        "port_audit_report_dir": str(pdd / "report"), "port_audit_formats": ["json"],
        "port_audit_pushgateway_url": monitoring["gateway"], "port_audit_interval_seconds": INTERVAL}))

    stamps = []
    for tick in ("1", "2"):
        started = time.time()
        artifacts = run_job(pdd, env, tick, "audit.yml")
        (reported,) = by_host(job_events(artifacts, "runner_on_ok"), "fleet_report").values()
        metrics = reported["res"]["metrics"]
        assert metrics["pushed"] == hosts and metrics["push_errors"] == {} and metrics["failed"] == [], metrics
        pushed = get(monitoring["gateway"] + "/metrics")
        verdicts = by_instance(pushed, "tcpstack_verdict", job="tcpstack_port_audit", tcpstack_source="port_audit")
        assert verdicts == {host: 0 for host in hosts}, verdicts
        times = by_instance(pushed, "tcpstack_sampler_last_success_timestamp_seconds", job="tcpstack_port_audit")
        assert sorted(times) == hosts and all(started <= t <= time.time() for t in times.values()), times
        stamps.append(times)
    assert all(stamps[1][host] > stamps[0][host] for host in hosts), stamps

    api = monitoring["api"]
    last = stamps[1][hosts[0]]
    query = 'tcpstack_sampler_last_success_timestamp_seconds{job="tcpstack_port_audit"} >= %f' % last

    def all_scraped():
        found = api.query(query)
        return found if len(found) == len(hosts) else []

    seen = wait_for(all_scraped, 30)
    assert sorted(s["metric"]["instance"] for s in seen) == hosts, seen
    assert api.get("/api/v1/query", query=STALE["expr"], time="%.3f" % time.time())["result"] == []
    later = api.get("/api/v1/query", query=STALE["expr"], time="%.3f" % (last + 2 * INTERVAL + 5))["result"]
    assert sorted(s["metric"]["instance"] for s in later) == hosts, later
