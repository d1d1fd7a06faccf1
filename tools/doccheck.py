"""Check that ansible-doc renders every module of the installed collection.

Module names come from plugins/modules/*.py (a Windows module's .py file
holds its documentation).  Runs ``ansible-doc tcpstack.tuning.<name>`` for
each with ANSIBLE_COLLECTIONS_PATH set to the install directory given on
the command line, and fails when any run fails, prints nothing, or prints
an error or warning.

Usage: .venv/bin/python tools/doccheck.py .build/installed
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
FQCN = 'tcpstack.tuning'
BAD = re.compile(r'\s*(\[(ERROR|WARNING|DEPRECATION WARNING)\]|ERROR!|Traceback)')


def check(name: str, env: dict[str, str]) -> list[str]:
    """Return the problems ansible-doc shows for one module."""
    ansible_doc = os.path.join(os.path.dirname(sys.executable), 'ansible-doc')
    proc = subprocess.run([ansible_doc, f'{FQCN}.{name}'], env=env, capture_output=True,
                          text=True, check=False)
    problems = [f'exit code {proc.returncode}'] if proc.returncode else []
    if not proc.stdout.strip():
        problems.append('no output')
    problems += [line for line in proc.stdout.splitlines() if BAD.match(line)]
    problems += [f'stderr: {line}' for line in proc.stderr.splitlines() if line.strip()]
    return problems


def main() -> int:
    """Check every module; print one line per module."""
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    names = sorted(p.stem for p in (ROOT / 'plugins' / 'modules').glob('*.py') if p.stem != '__init__')
    if not names:
        print('doccheck: no modules in plugins/modules', file=sys.stderr)
        return 1
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.abspath(sys.argv[1]),
               ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
    failed = 0
    for name in names:
        problems = check(name, env)
        print(f"doccheck: {FQCN}.{name}: {'FAILED' if problems else 'ok'}")
        for problem in problems:
            print(f'    {problem}')
        failed += bool(problems)
    print(f'doccheck: {len(names) - failed} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
