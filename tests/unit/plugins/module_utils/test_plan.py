from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import SETTINGS, same
from ansible_collections.tcpstack.tuning.plugins.module_utils.plan import Change, make_plan

values = st.dictionaries(st.sampled_from([s.key for s in SETTINGS if s.kind == "int"]),
                         st.integers(1, 5000).map(str), max_size=6)


@given(values)
def test_plan_of_desired_against_itself_is_empty(desired):
    plan = make_plan(desired, desired, same, "/etc/sysctl.d/x.conf", "a", "a")
    assert not plan.changed
    assert plan.changes == ()


@given(values, values)
def test_applying_the_plan_gives_desired(current, desired):
    plan = make_plan(current, desired, same)
    state = dict(current)
    for change in plan.changes:
        assert change.before == current.get(change.key)
        state[change.key] = change.after
    assert all(same(k, state[k], v) for k, v in desired.items())
    assert not make_plan(state, desired, same).changed


def test_meaning_not_text():
    plan = make_plan({"net.ipv4.ip_local_port_range": "32768\t60999"},
                     {"net.ipv4.ip_local_port_range": "32768 60999"}, same)
    assert not plan.changed


def test_reboot_and_file_flags():
    plan = make_plan({"a": "1"}, {"a": "2"}, lambda k, x, y: x == y, reboot_required_keys=("a",))
    assert plan.reboot_required and plan.changes == (Change("a", "1", "2"),)
    assert make_plan({}, {}, same, "/f", None, "x").file_changed
    assert not make_plan({}, {}, same, None, None, "x").changed
