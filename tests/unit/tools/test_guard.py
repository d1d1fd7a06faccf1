"""tools/guard.py: the house limits (files under plugins/ <= 500 lines without the module documentation, functions
<= 60 lines), on small trees made here."""

from __future__ import annotations

import textwrap

from tools import guard


def function(name, lines):
    """A function of exactly ``lines`` lines."""
    return "def %s():\n" % name + "    x = 1\n" * (lines - 2) + "    return x\n"


def tree(root, files):
    for rel, text in files.items():
        path = root / "plugins" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_clean_tree_passes(tmp_path, capsys):
    tree(tmp_path, {"module_utils/small.py": function("at_the_limit", 60) + "\n" * 430,
                    "modules/mod.py": "x = 1\n" * 500})
    assert guard.breaches(tmp_path) == []
    assert guard.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""


def test_a_long_function_is_listed_with_its_file_line_and_length(tmp_path):
    tree(tmp_path, {"module_utils/a.py": "import os\n\n\n" + function("fine", 60) + "\n\n" + function("too_long", 61),
                    "action/b.py": "class Action:\n" + textwrap.indent(function("run", 72), "    ")})
    assert guard.breaches(tmp_path) == [
        "plugins/action/b.py:2: function run is 72 lines (at most 60)",
        "plugins/module_utils/a.py:66: function too_long is 61 lines (at most 60)",
    ]


def test_a_long_file_is_listed(tmp_path, capsys):
    tree(tmp_path, {"module_utils/big.py": "x = 1\n" * 501, "module_utils/ok.py": "x = 1\n" * 500})
    assert guard.breaches(tmp_path) == ["plugins/module_utils/big.py: 501 lines without the module documentation "
                                        "(at most 500)"]
    assert guard.main([str(tmp_path)]) == 1
    assert "plugins/module_utils/big.py: 501 lines" in capsys.readouterr().out


def test_module_documentation_does_not_count_towards_the_file(tmp_path):
    docs = "".join('%s = r"""\n' % name + "text\n" * 200 + '"""\n' for name in ("DOCUMENTATION", "EXAMPLES", "RETURN"))
    code = "x = 1\n" * 500
    other = 'OTHER = r"""\n' + "text\n" * 10 + '"""\n'
    tree(tmp_path, {"modules/documented.py": docs + code, "modules/other_string.py": other + code})
    # the module strings aside, documented.py is 500 lines; any other string counts
    assert guard.breaches(tmp_path) == ["plugins/modules/other_string.py: 512 lines without the module documentation "
                                        "(at most 500)"]


def test_a_file_that_is_not_python_counts_every_line(tmp_path):
    tree(tmp_path, {"modules/win_thing.ps1": "line\n" * 501})
    assert guard.breaches(tmp_path) == ["plugins/modules/win_thing.ps1: 501 lines (at most 500)"]


def test_no_plugins_directory_is_an_error(tmp_path):
    assert guard.main([str(tmp_path)]) == 2
