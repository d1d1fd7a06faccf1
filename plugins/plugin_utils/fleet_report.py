# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet report of the port_audit role: pure functions, no I/O, on the controller only.

``host_row`` turns one host's port_usage_info / win_port_usage_info result
into a row (with the culprit process, where the audit named one); ``build_report`` ranks the rows riskiest first; ``render_json``,
``render_markdown``, ``render_html`` and ``render_summary`` turn the report
into text.  Every value that reaches HTML or Markdown is escaped, so a host
name or a finding holding markup renders as text.  Used by the fleet_report
action plugin; never sent to a host.
"""

from __future__ import annotations

import html
import json
import math

from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import clean_text, process_text, rate
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import fleet_egress
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import percent as _percent

VERDICTS = ("critical", "warning", "unknown", "ok")  # riskiest first
FORMATS = {"json": "port_audit.json", "markdown": "port_audit.md", "html": "port_audit.html"}
NO_RESULT = "no result: the host was unreachable or its audit failed before it ran"


COUNT_MAX = 2 ** 63 - 1


def _finite(value):
    """``value`` as a finite float, or None when it is not one (text, NaN, infinity, 10**400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _count(value):
    """``value`` as a whole number of ports or sockets, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= COUNT_MAX:
        return None
    return int(value)


def _plain_value(value, depth=0):
    """A recommendation's value as strict-JSON data with clean text (a host's result is not trusted)."""
    if value is None or isinstance(value, bool) or _count(value) is not None:
        return value
    if isinstance(value, float) and _finite(value) is not None:
        return value
    if isinstance(value, (list, tuple)) and depth < 4:
        return [_plain_value(item, depth + 1) for item in value][:100]
    return clean_text(value)[:1000]


def _clamp(value):
    return None if value is None else max(0.0, min(1.0, value))


def _empty_row(host, platform):
    return {
        "host": clean_text(host),
        "platform": clean_text(platform or "unknown"),
        "verdict": "unknown",
        "utilisation": None,
        "ports_held": None,
        "usable_ports": None,
        "top_destination": None,
        "max_new_connections_per_second": None,
        "projected_utilisation": None,
        "findings": [],
        "recommendations": {},
        "culprit": None,
        "cure": None,
        "error": None,
    }


def _top_destination(destinations):
    if not destinations:
        return None
    top = destinations[0]
    return {
        "endpoint": clean_text(top.get("endpoint", "")),
        "in_use": _count(top.get("in_use")),
        "time_wait": _count(top.get("time_wait")),
        "blocking": _count(top.get("blocking")),
        "utilisation": _finite(top.get("utilisation")),
    }


def _utilisation(row):
    """What the verdict is measured on: Windows, the ports held against the usable ones; Linux, the top
    destination's."""
    if row["platform"] == "windows":
        if row["usable_ports"]:
            return _clamp(float(row["ports_held"] or 0) / row["usable_ports"])
        return 1.0 if row["usable_ports"] == 0 else None
    if row["top_destination"] is not None:
        return _clamp(row["top_destination"]["utilisation"])
    return 1.0 if row["usable_ports"] == 0 else 0.0


def _dict(value):
    return value if isinstance(value, dict) else {}


def host_row(host, platform, result):
    """One host's row from its info module result (None when there is none).

    ``utilisation`` (0..1) is what the verdict is measured on: on Linux the
    busiest destination tuple's share of the usable ports (the limit is per
    tuple), on Windows the ports held on the host against the usable dynamic
    ports (one host-wide pool).
    """
    row = _empty_row(host, platform)
    if not isinstance(result, dict):
        row["error"] = NO_RESULT
        return row
    if result.get("failed") or result.get("unreachable") or result.get("skipped"):
        row["error"] = clean_text(result.get("msg") or "the audit failed")
        return row
    verdict = result.get("verdict")
    row["verdict"] = verdict if verdict in VERDICTS else "unknown"
    ephemeral = _dict(result.get("ephemeral"))
    row["usable_ports"] = _count(ephemeral.get("usable"))
    row["ports_held"] = _count(result.get("ports_held"))
    destinations = result.get("destinations")
    destinations = [d for d in destinations if isinstance(d, dict)] if isinstance(destinations, list) else []
    row["top_destination"] = _top_destination(destinations)
    row["utilisation"] = _utilisation(row)
    projected = [_finite(d.get("projected_utilisation")) for d in destinations]
    projected = [value for value in projected if value is not None and value >= 0]
    row["projected_utilisation"] = max(projected) if projected else None
    remote = _dict(result.get("capacity")).get("remote")
    remote = remote if isinstance(remote, dict) else None
    row["max_new_connections_per_second"] = _finite(remote.get("max_new_connections_per_second")) if remote else None
    findings = result.get("findings")
    row["findings"] = [clean_text(f) for f in findings] if isinstance(findings, list) else []
    unreadable = _unreadable(result, ephemeral, destinations[:1], remote)
    if unreadable:
        row["error"] = "this host's result holds values that are not numbers: %s" % ", ".join(unreadable)
    recommendations = result.get("recommendations")
    row["recommendations"] = dict((clean_text(k), _plain_value(v)) for k, v in recommendations.items()) \
        if isinstance(recommendations, dict) else {}
    row["culprit"] = culprit(row["host"], result)
    cure = result.get("cure")
    if isinstance(cure, dict) and cure.get("where") in CURES:
        row["cure"] = {"where": cure["where"], "summary": clean_text(cure.get("summary") or "")[:500]}
    return row


CURES = ("client", "host", "both", "none")
CULPRIT_KINDS = ("failing", "pooling", "bind_before_connect", "churner")


def culprit(host, result):
    """The process to blame on this host, from its result's client findings (one whose connect() calls fail
    first, then a pooling one) or its top churner: {"process", "pid", "at" ("name (pid N)@host"), "destination", "new_connections_per_second", "kind",
    "advice"}; None when the result names none.  Every value is checked: a host's result is not trusted."""
    findings = result.get("client_findings")
    findings = [f for f in findings if isinstance(f, dict)] if isinstance(findings, list) else []
    chosen = next((f for f in findings if f.get("kind") == "failing"), None) \
        or next((f for f in findings if f.get("kind") == "pooling"), None)
    if chosen is None and isinstance(result.get("top_churner"), dict):
        chosen = dict(result["top_churner"], kind="churner")
    if chosen is None and findings:
        chosen = findings[0]
    if chosen is None:
        return None
    name = clean_text(chosen.get("name") or "?")[:64]
    pid = _count(chosen.get("pid"))
    destination = chosen.get("destination")
    kind = chosen.get("kind")
    return {
        "process": name,
        "pid": pid,
        "at": process_text(pid, name, host=host),
        "destination": None if destination is None else clean_text(destination)[:200],
        "new_connections_per_second": _finite(chosen.get("new_connections_per_second")),
        "kind": kind if kind in CULPRIT_KINDS else "unknown",
        "advice": clean_text(chosen.get("advice") or "")[:500] or None,
    }


def culprit_text(row):
    """"python (pid 42)@web -> 10.0.0.2:8080 at 100 new connections/s (pooling)", or "-"."""
    item = row.get("culprit")
    if not item:
        return "-"
    text = item["at"]
    if item.get("destination"):
        text += " -> %s" % item["destination"]
    if item.get("new_connections_per_second") is not None:
        text += " at %s new connections/s" % rate(item["new_connections_per_second"])
    if item["kind"] == "failing":
        text += " (its connect() calls fail for want of ports)"
    elif item["kind"] == "pooling":
        text += " (pool its connections)"
    elif item["kind"] == "bind_before_connect":
        text += " (binds before connect)"
    return text


def _unreadable(result, ephemeral, top, remote):
    """The number fields of a result that hold something else, as "name value" texts (at most 5)."""
    fields = [("ports_held", result.get("ports_held"), _count), ("usable", ephemeral.get("usable"), _count)]
    for dest in top:
        fields += [(name, dest.get(name), _count) for name in ("in_use", "time_wait", "blocking")]
        fields.append(("utilisation", dest.get("utilisation"), _finite))
    if isinstance(remote, dict):
        fields.append(("max_new_connections_per_second", remote.get("max_new_connections_per_second"), _finite))
    bad = ["%s %s" % (name, clean_text(repr(value))[:40]) for name, value, parse in fields
           if value is not None and parse(value) is None]
    return bad[:5]


def risk_key(row):
    """Sort key: verdict (critical, warning, unknown, ok), then utilisation (highest first), then the ports held
    towards the top destination (most first), then the name."""
    utilisation = row.get("utilisation")
    top = row.get("top_destination") or {}
    in_use = _finite(top.get("in_use")) or 0.0
    return (VERDICTS.index(row["verdict"]) if row["verdict"] in VERDICTS else len(VERDICTS),
            -(utilisation if utilisation is not None else -1.0), -in_use, row["host"])


def build_report(rows, generated, title="Ephemeral-port audit", egresses=None):
    """The report: rows riskiest first, counts per verdict, the critical hosts and the fleet's verdict; with
    ``egresses`` (fleet_egress.rollup()), also ``egresses``."""
    ordered = sorted(rows, key=risk_key)
    counts = dict((verdict, 0) for verdict in VERDICTS)
    for row in ordered:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    worst = ordered[0]["verdict"] if ordered else "ok"
    report = {
        "title": clean_text(title),
        "generated": str(generated),
        "verdict": worst,
        "counts": counts,
        "critical": [row["host"] for row in ordered if row["verdict"] == "critical"],
        "hosts": ordered,
    }
    if egresses:
        report["egresses"] = egresses
    return report


# ---------------------------------------------------------------- text helpers
def percent(value):
    """0.912 -> "91.2%" (usage_wording.percent, as the findings say it); None -> "n/a"."""
    return "n/a" if value is None else _percent(value)


def utilisation_text(row):
    """"28.8%", or "28.8% (120% projected)" where a destination's rate of connections that leave a TIME_WAIT
    will hold more in steady state (what raises the verdict beyond the ports held now); a host already at 100%
    shows no projection."""
    text = percent(row["utilisation"])
    projected = row.get("projected_utilisation")
    now = row["utilisation"] or 0.0
    if projected is not None and now < projected and now < 1.0:
        text += " (%s projected)" % percent(projected)
    return text


def destination_text(row):
    top = row.get("top_destination")
    if not top:
        return "-"
    if top.get("in_use") is None:
        return top["endpoint"]
    return "%s (%s ports)" % (top["endpoint"], "{:,}".format(top["in_use"]))


def recommendation_items(row):
    """["tw_reuse: 1", "port_range: 32768 65535", ...] in a stable order."""
    out = []
    for key in sorted(row.get("recommendations") or {}):
        value = row["recommendations"][key]
        out.append("%s: %s" % (key, value if isinstance(value, str) else json.dumps(value, sort_keys=True)))
    return out


def render_json(report):
    """Strict JSON (no NaN or Infinity: host_row keeps only finite numbers)."""
    return json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"


# ---------------------------------------------------------------- markdown
def md_escape(value):
    """Text safe inside a Markdown table cell: no markup, no cell break, no line break."""
    text = html.escape(str(value), quote=False)
    for char in "\\`*_[]|":
        text = text.replace(char, "\\" + char)
    return " ".join(text.split())


def render_markdown(report):
    lines = ["# %s" % md_escape(report["title"]), "",
             "Generated %s. Fleet verdict: **%s** (%s)." % (
                 md_escape(report["generated"]), md_escape(report["verdict"]),
                 ", ".join("%d %s" % (report["counts"].get(v, 0), v) for v in VERDICTS)), "",
             "| host | platform | verdict | utilisation | top destination | recommendations | findings | culprit |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["hosts"]:
        findings = row["findings"] + ([row["error"]] if row.get("error") else [])
        lines.append("| %s |" % " | ".join([
            md_escape(row["host"]), md_escape(row["platform"]), md_escape(row["verdict"]),
            md_escape(utilisation_text(row)), md_escape(destination_text(row)),
            "<br>".join(md_escape(item) for item in recommendation_items(row)) or "-",
            "<br>".join(md_escape(item) for item in findings) or "-",
            md_escape(culprit_text(row)) + (" (%s)" % md_escape(row["cure"]["summary"])
                                            if row.get("cure") and row.get("culprit") else "")]))
    lines.append("")
    lines += fleet_egress.markdown_lines(report.get("egresses"), md_escape)
    return "\n".join(lines)


# ---------------------------------------------------------------- summary (the play's output)
def render_summary(report, width=40):
    """A plain-text table: host, platform, verdict, utilisation, top destination, recommendations."""
    header = ("host", "platform", "verdict", "utilisation", "top destination", "recommendations")
    rows = [header]
    for row in report["hosts"]:
        recommended = ", ".join(sorted(row["recommendations"])) or ("-" if not row.get("error") else row["error"])
        rows.append((row["host"], row["platform"], row["verdict"].upper() if row["verdict"] == "critical" else row["verdict"],
                     utilisation_text(row), destination_text(row), recommended))
    rows = [tuple(_shorten(" ".join(str(cell).split()), width) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("fleet verdict: %s (%s)" % (report["verdict"], ", ".join(
        "%d %s" % (report["counts"].get(v, 0), v) for v in VERDICTS)))
    for row in report["hosts"]:
        if row.get("culprit"):
            lines.append("culprit: %s" % " ".join(culprit_text(row).split()))
    lines += fleet_egress.summary_lines(report.get("egresses") or [])
    return "\n".join(lines)


def _shorten(text, width):
    return text if len(text) <= width else text[:width - 3] + "..."


# ---------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem;color:#1d2330;background:#fff}
h1{font-size:1.5rem;margin:0 0 .25rem}
p.meta{color:#5a6270;margin:0 0 1.25rem}
.counts span{display:inline-block;margin-right:.75rem}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #dde1e7;padding:.5rem .6rem;text-align:left;vertical-align:top;font-size:.92rem}
th{background:#f3f5f8;font-weight:600}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.8rem;font-size:.8rem;font-weight:700;color:#fff}
.verdict-critical .badge,.badge.critical{background:#c62828}
.verdict-warning .badge,.badge.warning{background:#ef8f00}
.verdict-ok .badge,.badge.ok{background:#2e7d32}
.verdict-unknown .badge,.badge.unknown{background:#6b7280}
.bar{width:10rem;height:.8rem;background:#e6e9ee;border-radius:.4rem;overflow:hidden}
.bar span{display:block;height:100%;background:#2e7d32}
.verdict-warning .bar span{background:#ef8f00}
.verdict-critical .bar span{background:#c62828}
.pct{font-variant-numeric:tabular-nums;font-size:.85rem;color:#40464f}
ul{margin:0;padding-left:1.1rem}
code{white-space:nowrap;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem}
.muted{color:#6b7280}
"""


def _e(value):
    return html.escape(str(value), quote=True)


def _html_row(number, row):
    utilisation = row["utilisation"]
    width = 0 if utilisation is None else round(utilisation * 100.0, 1)
    findings = row["findings"] + ([row["error"]] if row.get("error") else [])
    recommended = recommendation_items(row)
    capacity = row.get("max_new_connections_per_second")
    cells = [
        '<td class="host-name">%s</td>' % _e(row["host"]),
        "<td>%s</td>" % _e(row["platform"]),
        '<td><span class="badge %s">%s</span></td>' % (_e(row["verdict"]), _e(row["verdict"])),
        '<td><div class="bar" title="%s"><span style="width:%s%%"></span></div><span class="pct">%s</span></td>' % (
            _e(percent(utilisation)), _e(width), _e(utilisation_text(row))),
        "<td>%s%s</td>" % (_e(destination_text(row)), "" if capacity is None else
                           '<br><span class="muted">max %s new connections/s %s</span>' % (
                               _e("{:,}".format(capacity)),
                               "for the host" if row["platform"] == "windows" else "per destination")),
        "<td>%s</td>" % ("<ul>%s</ul>" % "".join("<li><code>%s</code></li>" % _e(i) for i in recommended)
                         if recommended else '<span class="muted">none</span>'),
        "<td>%s</td>" % ("<ul>%s</ul>" % "".join("<li>%s</li>" % _e(f) for f in findings)
                         if findings else '<span class="muted">none</span>'),
        '<td class="culprit">%s</td>' % (_e(culprit_text(row)) + (
            '<br><span class="muted">%s</span>' % _e(row["cure"]["summary"]) if row.get("cure") else "")
            if row.get("culprit") else '<span class="muted">none named</span>'),
    ]
    return '<tr class="host verdict-%s" id="host-%d" data-host="%s" data-verdict="%s">%s</tr>' % (
        _e(row["verdict"]), number, _e(row["host"]), _e(row["verdict"]), "".join(cells))


def render_html(report):
    """One self-contained page: inline CSS, no script, no external asset."""
    counts = "".join('<span><span class="badge %s">%d</span> %s</span>' % (_e(v), report["counts"].get(v, 0), _e(v))
                     for v in VERDICTS)
    rows = "\n".join(_html_row(number, row) for number, row in enumerate(report["hosts"], 1))
    return """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%(title)s</title>
<style>%(css)s</style>
</head>
<body>
<h1>%(title)s</h1>
<p class="meta">Generated %(generated)s. Fleet verdict: <span class="badge %(verdict)s" id="fleet-verdict">%(verdict)s</span></p>
<p class="counts">%(counts)s</p>
<table id="hosts">
<thead><tr><th>host</th><th>platform</th><th>verdict</th><th>utilisation</th><th>top destination</th>
<th>recommendations</th><th>findings</th><th>culprit</th></tr></thead>
<tbody>
%(rows)s
</tbody>
</table>
<p class="meta">Riskiest first. Utilisation: Linux, the busiest (local address, destination) tuple against the usable
ephemeral ports; Windows, the ports held on the host against its usable dynamic ports. Recommendations are options of
tcpstack.tuning.linux_tcp / win_tcp (or the tcp_tuning role). Culprit: the process whose connections burn the ports
(process@host, destination, new connections per second), named by an audit that sampled (sample_seconds).</p>
%(egresses)s</body>
</html>
""" % {"title": _e(report["title"]), "css": _CSS, "generated": _e(report["generated"]), "verdict": _e(report["verdict"]),
       "counts": counts, "rows": rows, "egresses": fleet_egress.html_section(report.get("egresses"), _e)}


RENDERERS = {"json": render_json, "markdown": render_markdown, "html": render_html}


def render(report, formats):
    """{format: text} for the formats asked (json, markdown, html)."""
    unknown = [f for f in formats if f not in RENDERERS]
    if unknown:
        raise ValueError("formats must be among %s, got %s" % (", ".join(sorted(RENDERERS)), ", ".join(map(str, unknown))))
    return dict((f, RENDERERS[f](report)) for f in formats)
