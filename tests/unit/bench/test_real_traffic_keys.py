"""The real-traffic harness's truth (tests/support/realtraffic.py) and the issue-21 keys of ``make bench``
(bench/run.py): pure functions, no namespace."""

from __future__ import annotations

import subprocess

import pytest

from bench import run as bench_run
from tests.support import realtraffic as rt


def test_interpolate_between_progress_points():
    points = [(10.0, 0, 0), (11.0, 100, 0), (13.0, 300, 10)]
    assert rt.interpolate(points, 9.0) == (0.0, 0.0)  # before the first point: the first
    assert rt.interpolate(points, 10.5) == (50.0, 0.0)
    assert rt.interpolate(points, 12.0) == (200.0, 5.0)
    assert rt.interpolate(points, 20.0) == (300.0, 10.0)  # after the last: the last
    assert rt.interpolate([], 1.0) == (0.0, 0.0)


def test_truth_over_a_window_of_the_client_own_counts():
    client = rt.Client("probe", subprocess.Popen(["true"]), pid=1)
    client.child.wait()
    for moment, made, failed in ((100.0, 0, 0), (101.0, 10, 2), (106.0, 60, 12)):
        client.add(made, failed, moment)
    truth = client.truth((101.0, 106.0))
    assert truth.covered and truth.seconds == pytest.approx(5.0)
    assert truth.rate == pytest.approx(10.0) and truth.failed_rate == pytest.approx(2.0)
    late = client.truth((101.0, 110.0))  # the counts stop before the window ends: not covered
    assert not late.covered
    assert client.reaches(106.0) and not client.reaches(106.5)


def test_bench_flat_keys_and_targets_of_issue_21():
    result = {"attribution": {"rate_errors": {"client_close": {"10": 0.05, "flat_out": 0.5},
                                              "exhausted": {"10": 1.0}},
                              "workload_slowdown": 0.01, "sample_cpu_seconds": 0.3, "sample_cpu_vs_ss_p": 1.2,
                              "peak_rss_mb": 30.0}}
    flat = bench_run.ratios(result)
    assert flat["attribution.rate_error.client_close.10"] == 0.05
    assert flat["attribution.rate_error.client_close.flat_out"] == 0.5
    assert flat["attribution.rate_error.exhausted.10"] == 1.0
    assert flat["attribution.rate_error.spawn_loop.flat_out"] is None
    assert flat["attribution.workload_slowdown"] == 0.01 and flat["attribution.sample_cpu_seconds"] == 0.3
    met = bench_run.targets(flat)
    assert met["attribution.rate_error.client_close.10 <= 0.2"] is True
    assert met["attribution.rate_error.client_close.flat_out <= 0.2"] is False
    assert met["attribution.rate_error.server_close.10 <= 0.2"] is None  # not measured
    assert met["attribution.workload_slowdown <= 0.05"] is True
    assert met["attribution.sample_cpu_vs_ss_p <= 1"] is False
    assert met["attribution.peak_rss_mb <= 64"] is True
