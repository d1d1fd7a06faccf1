"""Issue 13 findings 4 and 5 (Linux side): the port, integer and sysctl.d parsers are linear and only ever
raise their own error.

- ports.parse_port_range took 46.9 s on '1' + 64,000 spaces + 'x' (a regular expression that backtracked
  over every split of the blanks).  Now one pass, and text over RANGE_TEXT_MAX characters is refused unparsed.
- validation.strict_int and parse_port_list raised Python's own ValueError on more than 4,300 digits; a
  5,000-digit value in another sysctl.d file crashed every run that managed that key.
- hypothesis (derandomized, so the same examples every run) over all of them: no exception but
  ValidationError, and sysctl.d text never raises at all.
- A coarse linear-time guard, as the issue asks: a 1 MB hostile line is handled in well under a second.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.tcpstack.tuning.plugins.module_utils import ports
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import LINUX_TCP_KEYS, validate_options
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import (
    SYSCTL_CONF,
    boot_values,
    parse,
    predict,
    unusable,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import parse_port_list, parse_port_range
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError, strict_int

FUZZ = settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
MB = 1 << 20
SPACES = " " * 64000
WELL_UNDER_A_SECOND = 0.5


def timed(function, *args):
    """(CPU seconds of this process, result or the exception raised) of one call: the work done, not the time
    spent waiting for a core that other processes hold, so a loaded machine does not fail it."""
    started = time.process_time()
    try:
        out = function(*args)
    except Exception as exc:  # pylint: disable=broad-except  # the callers check its type
        out = exc
    return time.process_time() - started, out


# ---------------------------------------------------------------- the inputs
@pytest.mark.parametrize("text", [
    "1" + SPACES + "x",  # the input: 46.9 s before the fix
    "1" + " " * MB + "x",
    "1" + " " * MB + "2",
    " " * MB,
    "1-" * (MB // 2),
    "9" * MB,
])
def test_parse_port_range_refuses_a_megabyte_line_at_once(text):
    seconds, out = timed(parse_port_range, text, "port_range")
    assert isinstance(out, ValidationError) and out.option == "port_range", out
    assert seconds < WELL_UNDER_A_SECOND, seconds
    assert len(str(out)) < 600  # the value is shortened in the message


@pytest.mark.parametrize("text", ["1" + " " * MB + "x", "1" + "\t" * MB + "2", "1" + " -" * (MB // 2)])
def test_the_port_range_scanner_is_linear_without_the_length_cap(text):
    seconds, out = timed(ports._split_pair, text)  # pylint: disable=protected-access
    assert seconds < WELL_UNDER_A_SECOND, seconds
    assert out is None or isinstance(out, tuple)


@pytest.mark.parametrize("text", [
    ",".join(["1" + " " * 1000 + "x"] * 1000),
    "1" + " " * (MB - 2) + "x",
    ",".join("%d" % port for port in range(1, 65536, 2)),  # every other port: 190,000 characters, valid
    "1-" * (MB // 2 - 1),
    ("1" * 5000 + ",") * 200,
])
def test_parse_port_list_handles_a_megabyte_in_well_under_a_second(text):
    seconds, out = timed(parse_port_list, text, "reserved_ports")
    assert isinstance(out, (tuple, ValidationError)), out
    assert seconds < WELL_UNDER_A_SECOND, seconds


def test_a_port_list_over_the_cap_is_refused_unparsed():
    with pytest.raises(ValidationError) as err:
        parse_port_list("1," * (ports.LIST_TEXT_MAX // 2 + 1), "reserved_ports")
    assert "at most %d characters" % ports.LIST_TEXT_MAX in str(err.value)


@pytest.mark.parametrize("value", ["1" * 5000, " " + "9" * 4301 + " ", "+" + "0" * 5000 + "1" * 5000])
def test_strict_int_refuses_thousands_of_digits_with_its_own_error(value):
    with pytest.raises(ValidationError) as err:
        strict_int(value, "somaxconn", 1, 2147483647)
    message = str(err.value)
    assert message.startswith("somaxconn: ") and "an integer from 1 to 2147483647" in message
    assert "(%d characters)" % len(value) in message and len(message) < 400


def test_leading_zeros_still_parse():
    assert strict_int("0" * 100 + "42", "somaxconn", 1, 100) == 42


@pytest.mark.parametrize("option", ["somaxconn", "fin_timeout", "max_syn_backlog", "tw_reuse", "port_range",
                                    "reserved_ports"])
def test_validate_options_with_5000_digits_names_the_option(option):
    with pytest.raises(ValidationError) as err:
        validate_options({option: "1" * 5000})
    assert err.value.option == option and len(str(err.value)) < 600


def test_a_5000_digit_value_in_another_file_is_refused_like_the_kernel_does():
    layout = {"/usr/lib/sysctl.d/50-x.conf": "net.core.somaxconn = %s\nnet.ipv4.tcp_fin_timeout = 45\n" % ("1" * 5000),
              SYSCTL_CONF: "net.ipv4.ip_local_port_range = %s 60999\n" % ("7" * 5000)}
    for init in ("systemd", "procps"):
        got = predict(layout, LINUX_TCP_KEYS, init)
        assert "net.core.somaxconn" not in got and got["net.ipv4.tcp_fin_timeout"].value == "45"
        assert "net.ipv4.ip_local_port_range" not in got
    values = boot_values(layout, LINUX_TCP_KEYS, {"net.core.somaxconn": "4096"})
    assert values["net.core.somaxconn"]["procps"]["value"] == "4096"
    found = unusable(layout, LINUX_TCP_KEYS)
    assert len(found) == 2 and all("(5000 characters)" in f or "(5006 characters)" in f for f in found), found


@pytest.mark.parametrize("text", [
    "net.core.somaxconn = " + "1" * MB,
    "net.core.somaxconn" + " " * MB + "= 1",
    "-" + " " * MB,
    "net.ipv4.ip_local_reserved_ports = " + "1-" * (MB // 2),
    "=" * MB,
])
def test_a_sysctl_d_line_of_a_megabyte_is_analysed_in_well_under_a_second(text):
    layout = {"/etc/sysctl.d/10-x.conf": text}
    started = time.process_time()
    for init in ("systemd", "procps"):
        predict(layout, LINUX_TCP_KEYS, init)
    unusable(layout, LINUX_TCP_KEYS)
    assert time.process_time() - started < 2 * WELL_UNDER_A_SECOND  # two inits, plus the refused-value scan


def test_sysctl_d_analysis_time_grows_linearly_with_the_number_of_lines():
    """Coarse: a file of many assignments; twice the lines may cost at most four times as long."""
    def cost(lines):
        layout = {"/etc/sysctl.d/10-x.conf": "net.core.somaxconn = 1\n# a comment\n" * lines}
        best = None
        for _attempt in range(3):
            started = time.process_time()
            predict(layout, LINUX_TCP_KEYS, "procps")
            unusable(layout, LINUX_TCP_KEYS)
            took = time.process_time() - started
            best = took if best is None else min(best, took)
        return best
    small, large = cost(5000), cost(10000)
    assert large < 4 * small, (small, large)


# ---------------------------------------------------------------- fuzz
TEXT = st.text(alphabet=st.sampled_from(list("0123456789 \t-,+xX[]*?#;=.\n/\x00\u0663\u00a0")) | st.characters(),
               max_size=300)
KEYISH = st.sampled_from(LINUX_TCP_KEYS + ("net.ipv4.conf.*.rp_filter", "-net.core.somaxconn", "kernel/x"))


@FUZZ
@given(TEXT)
def test_port_parsers_raise_only_validation_error(text):
    for function, option in ((parse_port_range, "port_range"), (parse_port_list, "reserved_ports")):
        try:
            function(text, option)
        except ValidationError as exc:
            assert exc.option == option


@FUZZ
@given(st.one_of(TEXT, st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=3)))
def test_strict_int_and_port_range_raise_only_validation_error(value):
    for call in (lambda: strict_int(value, "somaxconn", 1, 65535), lambda: parse_port_range(value, "port_range"),
                 lambda: parse_port_list(value, "reserved_ports")):
        try:
            call()
        except ValidationError:
            pass


@FUZZ
@given(st.lists(st.tuples(KEYISH, st.sampled_from([" = ", "=", " ", "\t=\t", ""]),
                          st.one_of(TEXT, st.integers(-2 ** 70, 2 ** 70).map(str),
                                    st.integers(4000, 6000).map(lambda n: "9" * n))), max_size=8),
       st.sampled_from(["/etc/sysctl.d/10-x.conf", SYSCTL_CONF, "/usr/lib/sysctl.d/.hidden.conf"]))
def test_sysctl_d_text_never_raises(lines, path):
    text = "\n".join(key + sep + value for key, sep, value in lines)
    layout = {path: text, "/etc/sysctl.d/99-y.conf": text[::-1]}
    for init in ("systemd", "procps"):
        parse(text, path, init)
        predict(layout, LINUX_TCP_KEYS, init)
    boot_values(layout, LINUX_TCP_KEYS, {})
    unusable(layout, LINUX_TCP_KEYS)


@pytest.mark.parametrize("size", [1000, 10000])
def test_the_range_parse_time_does_not_grow_with_the_square_of_the_input(size):
    """Coarse: ten times the blanks may not cost a hundred times as long (quadratic would)."""
    small = min(timed(ports._split_pair, "1" + " " * size + "x")[0] for _attempt in range(5))  # pylint: disable=protected-access
    large = min(timed(ports._split_pair, "1" + " " * (size * 10) + "x")[0] for _attempt in range(5))  # pylint: disable=protected-access
    assert large < max(small, 1e-4) * 40, (small, large)
