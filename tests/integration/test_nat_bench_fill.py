"""The NAT bench's table (issue 23): tests/support/conntrack_fill.py on the real kernel, in a namespace of the test's
own.  The entries it creates are what the bench measures, so they must be what ``conntrack -L`` and the module both
see as source-NATed flows, egress key by egress key.  Root, iproute2 and conntrack are needed: locally the tests
skip without them, under CI=true they fail.  Deleting the namespace deletes its table.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from tests.integration.nat_lab import READ, conntrack_lines
from tests.integration.test_conntrack import egress_counts
from tests.support.ci import need, need_root_netns
from tests.support.collection import ROOT, collections_path
from tests.support.netns import Sandbox

COUNT = 3072  # 16 destinations x 192: every destination sees all 64 sources, one in four TIME_WAIT


@pytest.fixture
def filled():
    need_root_netns()
    need(shutil.which("conntrack") is not None, "needs conntrack (Debian package conntrack; tools/hostdeps.py)")
    with Sandbox.new(prefix="natfill") as box:
        first = box.exec([sys.executable, "-m", "tests.support.conntrack_fill", "--count", 1000], cwd=str(ROOT))
        rest = box.exec([sys.executable, "-m", "tests.support.conntrack_fill", "--count", COUNT, "--start", 1000],
                        cwd=str(ROOT))
        yield box, [json.loads(first.stdout), json.loads(rest.stdout)]


def test_the_fill_makes_source_nated_flows_that_the_module_counts_as_conntrack_does(filled):
    box, fills = filled
    assert [(f["sent"], f["errors"]) for f in fills] == [(1000, 0), (COUNT - 1000, 0)]
    assert box.exec(["conntrack", "-C"]).stdout.split() == [str(COUNT)]
    lines = conntrack_lines(box, "-p", "tcp")
    assert len(lines) == COUNT
    assert sum(" TIME_WAIT " in line for line in lines) == COUNT // 4
    expected = egress_counts(lines)  # every entry NATed: the reply goes to 192.0.2.1, not to the inner source
    assert sum(count for count, dummy in expected.values()) == COUNT and len(expected) == 16
    env = dict(os.environ, PYTHONPATH=str(collections_path()))
    reading = json.loads(box.exec([sys.executable, "-c", READ, 50], env=env).stdout)
    assert (reading["entries"], reading["snat_entries"], reading["egress_total"]) == (COUNT, COUNT, 16)
    got = {(item["translated"], item["destination"], item["port"]): item for item in reading["egress"]}
    assert set(got) == set(expected)
    for key, (count, sources) in expected.items():
        assert got[key]["in_use"] == count
        assert got[key]["closing"] == count // 4
        assert got[key]["sources_total"] == len(sources) == 64


def test_the_fill_refuses_what_exists_and_says_so(filled):
    box, dummy = filled
    again = box.exec([sys.executable, "-m", "tests.support.conntrack_fill", "--count", 10], cwd=str(ROOT),
                     check=False)
    assert again.returncode == 1
    assert json.loads(again.stdout) == {"sent": 10, "errors": 10, "first_error": os.strerror(17),
                                        "seconds": json.loads(again.stdout)["seconds"]}
    assert box.exec(["conntrack", "-C"]).stdout.split() == [str(COUNT)]
