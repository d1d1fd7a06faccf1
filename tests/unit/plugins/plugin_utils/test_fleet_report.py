"""fleet_report: rows from info results, riskiest-first ranking, and escaped JSON / Markdown / HTML / summary."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ansible_collections.tcpstack.tuning.plugins.plugin_utils import fleet_report as fr

NOW = "2026-11-24 10:00:00 UTC"


def linux(verdict="ok", utilisation=0.1, endpoint="10.0.0.2:8080", in_use=100, recommendations=None, findings=None):
    return {
        "platform": "linux", "changed": False, "verdict": verdict, "ports_held": in_use,
        "ephemeral": {"range": [40000, 40999], "size": 1000, "usable": 1000},
        "destinations": [{"endpoint": endpoint, "in_use": in_use, "time_wait": in_use, "blocking": in_use,
                          "utilisation": utilisation}] if endpoint else [],
        "capacity": {"remote": {"max_new_connections_per_second": 16.67}},
        "findings": findings if findings is not None else [],
        "recommendations": recommendations if recommendations is not None else {},
    }


def windows(verdict="ok", held=1000, usable=16384):
    return {
        "platform": "windows", "verdict": verdict, "ports_held": held,
        "ephemeral": {"range": [49152, 65535], "size": 16384, "usable": usable},
        "destinations": [{"endpoint": "10.0.0.9:443", "in_use": held, "utilisation": held / 16384.0}],
        "capacity": {"remote": {"max_new_connections_per_second": 136.53}},
        "findings": [], "recommendations": {"time_wait_delay": 30},
    }


def test_linux_row_takes_the_busiest_tuple():
    row = fr.host_row("web", "linux", linux("critical", 1.0, in_use=1000, recommendations={"tw_reuse": 1}))
    assert row["verdict"] == "critical" and row["utilisation"] == 1.0
    assert row["top_destination"]["endpoint"] == "10.0.0.2:8080" and row["top_destination"]["in_use"] == 1000
    assert row["recommendations"] == {"tw_reuse": 1} and row["error"] is None
    assert row["max_new_connections_per_second"] == 16.67


def test_linux_row_without_destinations_is_zero():
    row = fr.host_row("idle", "linux", linux(endpoint=None))
    assert row["utilisation"] == 0.0 and row["top_destination"] is None


def test_windows_row_is_host_wide():
    row = fr.host_row("win", "windows", windows("warning", held=12288, usable=16384))
    assert row["utilisation"] == 0.75 and row["platform"] == "windows"
    assert fr.host_row("w0", "windows", windows(usable=0))["utilisation"] == 1.0


@pytest.mark.parametrize("result, message", [
    (None, fr.NO_RESULT),
    ({"failed": True, "msg": "top must be from 1 to 1000"}, "top must be from 1 to 1000"),
    ({"unreachable": True, "msg": "timed out"}, "timed out"),
    ({"skipped": True}, "the audit failed"),
    ("nonsense", fr.NO_RESULT),
])
def test_no_usable_result_is_unknown_with_the_reason(result, message):
    row = fr.host_row("h", "linux", result)
    assert row["verdict"] == "unknown" and row["error"] == message and row["utilisation"] is None


def test_unknown_verdict_values_become_unknown():
    assert fr.host_row("h", "linux", linux(verdict="weird"))["verdict"] == "unknown"


def test_report_ranks_riskiest_first():
    rows = [
        fr.host_row("a-ok", "linux", linux("ok", 0.2)),
        fr.host_row("b-warn-low", "linux", linux("warning", 0.1)),
        fr.host_row("c-crit", "linux", linux("critical", 0.95)),
        fr.host_row("d-unknown", "linux", None),
        fr.host_row("e-warn-high", "windows", windows("warning", held=13000)),
        fr.host_row("f-crit-full", "linux", linux("critical", 1.0)),
        fr.host_row("g-ok-idle", "linux", linux("ok", 0.0)),
    ]
    report = fr.build_report(rows, NOW, "T")
    assert [r["host"] for r in report["hosts"]] == [
        "f-crit-full", "c-crit", "e-warn-high", "b-warn-low", "d-unknown", "a-ok", "g-ok-idle"]
    assert report["verdict"] == "critical" and report["critical"] == ["f-crit-full", "c-crit"]
    assert report["counts"] == {"critical": 2, "warning": 2, "unknown": 1, "ok": 2}


def test_empty_fleet():
    report = fr.build_report([], NOW)
    assert report["verdict"] == "ok" and report["hosts"] == [] and report["critical"] == []
    assert "<tbody>\n\n</tbody>" in fr.render_html(report)


@given(hs.lists(hs.tuples(hs.text(min_size=1, max_size=8), hs.sampled_from(fr.VERDICTS),
                          hs.one_of(hs.none(), hs.floats(0, 1))), max_size=20))
@settings(max_examples=200, deadline=None)
def test_ranking_is_a_sorted_permutation(items):
    rows = []
    for name, verdict, utilisation in items:
        row = fr.host_row(name, "linux", linux(verdict, utilisation))
        rows.append(row)
    ordered = fr.build_report(rows, NOW)["hosts"]
    assert sorted(map(id, ordered)) == sorted(map(id, rows))
    keys = [(fr.VERDICTS.index(r["verdict"]), -(r["utilisation"] if r["utilisation"] is not None else -1)) for r in ordered]
    assert keys == sorted(keys)


def test_percent():
    assert fr.percent(None) == "n/a" and fr.percent(1.0) == "100%" and fr.percent(0.9155) == "91.5%"
    assert fr.percent(0) == "0%"


def test_json_round_trips():
    report = fr.build_report([fr.host_row("web", "linux", linux("critical", 1.0))], NOW)
    assert json.loads(fr.render_json(report)) == report


EVIL = '<script>alert("x")</script>'


class _Collect(HTMLParser):
    """Tags, text and attributes of a page, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.tags, self.text, self.rows, self.attrs = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append(dict(attrs))
        if tag == "tr" and "host" in (dict(attrs).get("class") or "").split():
            self.rows.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def evil_report():
    result = linux("critical", 1.0, endpoint=EVIL + ":80", findings=[EVIL + " & more"],
                   recommendations={"port_range": "32768 65535", EVIL: EVIL})
    return fr.build_report([fr.host_row(EVIL, "linux", result), fr.host_row("b\"'&<>", "windows", windows())], NOW,
                           title=EVIL)


def test_html_escapes_every_value_and_has_no_script_or_external_asset():
    page = fr.render_html(evil_report())
    assert "<script" not in page.lower()
    parser = _Collect()
    parser.feed(page)
    assert "script" not in parser.tags
    assert {"link", "img", "iframe", "object", "embed"}.isdisjoint(parser.tags)
    text = "".join(parser.text)
    assert EVIL in text  # shown as text
    assert [r["data-host"] for r in parser.rows] == [EVIL, "b\"'&<>"]
    assert not any(k.startswith("on") for attrs in parser.attrs for k in attrs)
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "<style>" in page


def test_html_bar_width_follows_utilisation():
    page = fr.render_html(fr.build_report([fr.host_row("web", "linux", linux("warning", 0.755))], NOW))
    assert 'style="width:75.5%"' in page and "75.5%" in page


def test_markdown_escapes_and_keeps_one_line_per_host():
    text = fr.render_markdown(evil_report())
    assert "<script" not in text and "&lt;script&gt;" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2  # header + two hosts
    assert all(line.count(" | ") == 7 for line in table[1:]), table  # pipes in values are escaped
    assert fr.md_escape("a|b\nc*d") == "a\\|b c\\*d"


def test_summary_table():
    web = linux("critical", 1.0, in_use=1000, recommendations={"tw_reuse": 1, "port_range": "x"})
    report = fr.build_report([fr.host_row("web", "linux", web), fr.host_row("win", "windows", windows()),
                              fr.host_row("gone", "linux", None)], NOW)
    lines = fr.render_summary(report).splitlines()
    assert lines[0].split() == ["host", "platform", "verdict", "utilisation", "top", "destination", "recommendations"]
    assert lines[2].split()[:5] == ["web", "linux", "CRITICAL", "100%", "10.0.0.2:8080"]
    assert "port_range, tw_reuse" in lines[2]
    assert lines[3].startswith("gone") and "unknown" in lines[3] and "no result" in lines[3]  # unknown before ok
    assert lines[4].startswith("win")
    assert lines[-1] == "fleet verdict: critical (1 critical, 0 warning, 1 unknown, 1 ok)"


def test_render_formats():
    report = fr.build_report([], NOW)
    assert set(fr.render(report, ["json", "html"])) == {"json", "html"}
    with pytest.raises(ValueError, match="formats must be among"):
        fr.render(report, ["pdf"])


# ---------------------------------------------------------------- the culprit (issue 14)
CHURNER = {"kind": "pooling", "pid": 4242, "name": "python3", "user": "app", "destination": "10.0.0.2:8080",
           "new_connections_per_second": 100.13, "advice": "pool the connections", "sentence": "pid 4242 ..."}


def blamed(**fields):
    result = linux("critical", 1.0, in_use=1000, recommendations={"tw_reuse": 1})
    result.update(client_findings=[dict(CHURNER, kind="bind_before_connect", destination=None), CHURNER],
                  top_churner={"pid": 4242, "name": "python3", "destination": "10.0.0.2:8080",
                               "new_connections_per_second": 100.13},
                  cure={"where": "both", "summary": "fix the client (pid 4242 (python3, user app)) for a lasting cure"})
    result.update(fields)
    return result


def test_culprit_is_the_pooling_finding_as_process_at_host():
    row = fr.host_row("web", "linux", blamed())
    assert row["culprit"] == {"process": "python3", "pid": 4242, "at": "python3 (pid 4242)@web",
                              "destination": "10.0.0.2:8080", "new_connections_per_second": 100.13, "kind": "pooling",
                              "advice": "pool the connections"}
    assert row["cure"]["where"] == "both"
    assert fr.culprit_text(row) == "python3 (pid 4242)@web -> 10.0.0.2:8080 at 100.1 new connections/s (pool its connections)"


def test_culprit_falls_back_to_the_top_churner_then_to_none():
    row = fr.host_row("web", "linux", blamed(client_findings=[]))
    assert row["culprit"]["kind"] == "churner" and row["culprit"]["at"] == "python3 (pid 4242)@web"
    assert fr.host_row("web", "linux", linux())["culprit"] is None
    assert fr.culprit_text(fr.host_row("web", "linux", linux())) == "-"


def test_culprit_in_every_format():
    report = fr.build_report([fr.host_row("web", "linux", blamed()), fr.host_row("idle", "linux", linux())], NOW)
    expected = "python3 (pid 4242)@web -&gt; 10.0.0.2:8080 at 100.1 new connections/s"
    assert json.loads(fr.render_json(report))["hosts"][0]["culprit"]["at"] == "python3 (pid 4242)@web"
    summary = fr.render_summary(report).splitlines()
    assert summary[-1] == ("culprit: python3 (pid 4242)@web -> 10.0.0.2:8080 at 100.1 new connections/s "
                           "(pool its connections)")
    markdown = fr.render_markdown(report)
    assert "| culprit |" in markdown.splitlines()[4] and expected in markdown
    assert "fix the client (pid 4242 (python3, user app)) for a lasting cure" in markdown
    page = fr.render_html(report)
    assert '<td class="culprit">%s' % expected in page and "<th>culprit</th>" in page
    assert '<span class="muted">none named</span>' in page  # idle
