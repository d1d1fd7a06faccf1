"""Write each role's defaults/main.yml from its meta/argument_specs.yml.

A role variable is declared once, in the role's meta/argument_specs.yml (its type, choices, default and
description; ansible-core checks it and ansible-doc shows it). ansible-core does not apply an argument spec's
``default:`` to the play, so the role still needs defaults/main.yml: this tool generates it from those
``default:`` values, in the spec's order. tests/unit/plugins/plugin_utils/test_role_vars.py fails while a committed
file differs from what this tool writes.

Usage: .venv/bin/python tools/role_defaults.py           rewrite every roles/*/defaults/main.yml
       .venv/bin/python tools/role_defaults.py --check   only list the files that differ (exit 1 if any)
"""

from __future__ import annotations

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = ("---\n"
          "# Generated from meta/argument_specs.yml by tools/role_defaults.py: do not edit. A variable is declared,\n"
          "# with its default and description, in meta/argument_specs.yml only; change it there, then run\n"
          "# `.venv/bin/python tools/role_defaults.py`. README.md shows the variables as a table.\n")


def spec_options(role_dir: pathlib.Path) -> dict:
    """The options of the role's entry point ``main``, as meta/argument_specs.yml declares them."""
    document = yaml.safe_load((role_dir / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    return document["argument_specs"]["main"]["options"]


def defaults_text(options: dict) -> str:
    """defaults/main.yml for these options: one ``name: default`` line per option that has a default."""
    lines = []
    for name, spec in options.items():
        if "default" in spec:  # "{name: value}" in flow style, so that lists stay on one line; then unbraced
            line = yaml.safe_dump({name: spec["default"]}, default_flow_style=True, width=1000)
            lines.append(line[1:-2] + "\n")
    return HEADER + "".join(lines)


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print(__doc__, file=sys.stderr)
        return 2
    differ = []
    for role_dir in sorted(p.parent.parent for p in ROOT.glob("roles/*/meta/argument_specs.yml")):
        path = role_dir / "defaults" / "main.yml"
        text = defaults_text(spec_options(role_dir))
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            differ.append(path.relative_to(ROOT))
            if not check:
                path.parent.mkdir(exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for path in differ:
        print("%s %s" % ("differs from its argument spec:" if check else "written:", path))
    return 1 if check and differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
