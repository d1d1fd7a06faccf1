"""The fleet report against hostile or broken host results, and a report directory someone else controls.

A host's result is text the host wrote: a number that is not one, a value no float holds, NaN, terminal escapes
and bidi overrides. Each stays that host's problem: the report is still built, its JSON is strict, and nothing a
terminal or an editor would act on reaches the summary, the Markdown or the HTML.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ansible_collections.tcpstack.tuning.plugins.action.fleet_report import (
    Refused,
    _flag,
    _formats,
    _gathered,
    _report_dir,
    _write_report,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import fleet_report as fr

from tests.support.ci import need

GOOD = {"verdict": "critical", "ephemeral": {"usable": 1000}, "ports_held": 1000,
        "destinations": [{"endpoint": "10.0.0.2:8080", "in_use": 1000, "time_wait": 998, "blocking": 1000,
                          "utilisation": 1.0}],
        "capacity": {"remote": {"max_new_connections_per_second": 16.67}}, "findings": ["full"],
        "recommendations": {"tw_reuse": 1}}
HOSTILE = [
    {"destinations": [dict(GOOD["destinations"][0], in_use="many")]},
    {"destinations": [dict(GOOD["destinations"][0], in_use=10 ** 400, utilisation=10 ** 400)]},
    {"destinations": [dict(GOOD["destinations"][0], utilisation=float("nan"))], "ports_held": float("inf")},
    {"capacity": {"remote": {"max_new_connections_per_second": float("nan")}}},
    {"recommendations": {"port_range": float("nan"), "x\x1b[2J": ["\u202e", 10 ** 400]}},
    {"ephemeral": "lots", "destinations": "none", "capacity": [], "findings": "one", "recommendations": ["a"]},
    {"findings": ["\x1b]0;owned\x07 line\nbreak \u202egnp.exe"]},
    {"client_findings": [{"kind": "pooling", "name": "<script>x</script>\x1b[2J", "pid": "1",
                          "destination": "\u202e8080", "new_connections_per_second": float("nan")}],
     "cure": {"where": "client", "summary": "\x07<b>"}},
    {"client_findings": "all", "top_churner": {"name": ["x"], "pid": 10 ** 400, "new_connections_per_second": 10 ** 400}},
    {"client_findings": [None, 3, {"kind": "\x1bevil", "pid": -1}], "cure": {"where": "\x1b"}},
]
BAD_CHARS = set("\x1b\x07\x00\x7f\u202e\u2066") | {chr(c) for c in range(0x80, 0xa0)}


def all_text(report):
    return fr.render_summary(report) + "".join(fr.render(report, list(fr.FORMATS)).values())


@pytest.mark.parametrize("broken", HOSTILE)
def test_a_broken_result_is_that_host_s_problem_and_the_report_is_written(broken):
    rows = [fr.host_row("good", "linux", GOOD), fr.host_row("bad\x1b[31m", "linux", dict(GOOD, **broken))]
    report = fr.build_report(rows, "2026-12-01 00:00:00 UTC")
    texts = fr.render(report, list(fr.FORMATS))
    json.loads(texts["json"], parse_constant=lambda name: pytest.fail("non-strict JSON: %s" % name))
    assert report["hosts"][0]["host"] in ("good", "bad\\x1b[31m")
    bad = [row for row in report["hosts"] if row["host"] != "good"][0]
    if "destinations" in broken or "ports_held" in broken or "capacity" in broken or "ephemeral" in broken:
        assert bad["error"] and bad["error"].startswith("this host's result holds values that are not numbers") \
            or broken.get("ephemeral") == "lots", bad
    assert not BAD_CHARS & set(all_text(report))


@settings(max_examples=300, deadline=None)
@given(hs.recursive(hs.none() | hs.booleans() | hs.integers() | hs.floats() | hs.text(),
                    lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=8), inner, max_size=4),
                    max_leaves=20),
       hs.text())
def test_any_result_gives_a_row_and_strict_json(result, host):
    value = {"verdict": "warning", "destinations": [result], "recommendations": {"k": result}, "findings": [result],
             "ephemeral": {"usable": result}, "ports_held": result} if not isinstance(result, dict) else result
    report = fr.build_report([fr.host_row(host, "linux", value)], "now")
    json.loads(fr.render_json(report))
    assert not BAD_CHARS & set(all_text(report))


def test_control_and_bidi_characters_are_shown_escaped():
    assert fr.clean_text("a\x1b[2Jb\x07\u202ec\x85") == "a\\x1b[2Jb\\x07\\u202ec\\x85"
    assert fr.clean_text("Überlauf ⚠") == "Überlauf ⚠"


def test_a_missing_report_directory_is_created_0755(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "a" / "b"
        assert _report_dir(str(target)) is None
    finally:
        os.umask(old)
    assert (target.stat().st_mode & 0o777) == 0o755 and ((tmp_path / "a").stat().st_mode & 0o777) == 0o755


@pytest.mark.parametrize("make, reason", [
    (lambda p: (p.mkdir(), p.chmod(0o775)), "group or others may write to it (mode 0775)"),
    (lambda p: (p.mkdir(), p.chmod(0o1777)), "group or others may write to it (mode 1777)"),
    (lambda p: p.symlink_to(p.parent), "it is not a directory (a symbolic link)"),
    (lambda p: p.write_text("x"), "it is not a directory"),
])
def test_a_directory_others_control_is_refused(tmp_path, make, reason):
    target = tmp_path / "report"
    make(target)
    assert _report_dir(str(target)).startswith(reason)


def test_a_directory_of_another_user_is_refused(tmp_path):
    need(os.geteuid() == 0, "only root can give a directory to another user")
    target = tmp_path / "report"
    target.mkdir(0o755)
    os.chown(target, 65534, 65534)
    assert _report_dir(str(target)).startswith("it belongs to another user (uid 65534)")


def test_the_report_files_are_written_whole_0644_with_no_temporary_left(tmp_path):
    report = fr.build_report([fr.host_row("good", "linux", GOOD)], "now")
    old = os.umask(0o077)
    try:
        files = _write_report(report, ["json", "html"], str(tmp_path / "out"))
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert files == {"json": str(out / "port_audit.json"), "html": str(out / "port_audit.html")}
    assert sorted(os.listdir(tmp_path / "out")) == ["port_audit.html", "port_audit.json"]
    assert all(os.stat(path).st_mode & 0o777 == 0o644 for path in files.values())
    assert json.loads((tmp_path / "out" / "port_audit.json").read_text()) == json.loads(fr.render_json(report))
    assert _write_report(report, [], str(tmp_path / "none")) == {} and not (tmp_path / "none").exists()


def test_a_report_directory_others_control_is_refused_before_any_write(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    target.chmod(0o777)
    with pytest.raises(Refused) as caught:
        _write_report(fr.build_report([], "now"), ["json"], str(target))
    assert str(caught.value).startswith("dest: refusing to write the report to %s: group or others may write" % target)
    assert not os.listdir(target)


def test_the_action_options_are_refused_with_their_messages():
    assert _formats({}) == ["json", "markdown", "html"] and _formats({"formats": "json, html"}) == ["json", "html"]
    with pytest.raises(Refused, match="^formats must be among json, markdown, html, got pdf$"):
        _formats({"formats": ["json", "pdf"]})
    assert _flag({}, "fail_on_critical") is False and _flag({"fail_on_critical": "yes"}, "fail_on_critical") is True
    with pytest.raises(Refused, match="^fail_on_critical must be a boolean, got 'perhaps'$"):
        _flag({"fail_on_critical": "perhaps"}, "fail_on_critical")
    with pytest.raises(Refused, match="^results must be a dict"):
        _gathered({"results": ["web"]}, {})


def test_a_host_without_a_result_gets_its_failure_or_none():
    hostvars = {"web": {"_audit": {"failed": True, "msg": "no python"}}, "db": {"port_audit_result": GOOD}}
    gathered = _gathered({"error_vars": ["_audit"]},
                         {"ansible_play_hosts_all": ["web", "db", "gone"], "hostvars": hostvars})
    assert gathered == {"web": {"failed": True, "msg": "no python"}, "db": GOOD, "gone": None}
