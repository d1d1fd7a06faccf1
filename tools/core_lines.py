"""Run the unit tests and ansible-test sanity on the second ansible-core line.

`make unit sanity` cover ansible-core 2.19 on Python 3.11 (.venv); this covers
the newest line, 2.21, on Python 3.12, in .venv-2.21 built from the exact pins
of requirements-core-2.21.txt (rebuilt whenever that file changes).

Python 3.12 is taken from $PYTHON312, a working python3.12 on PATH, or pyenv's
versions dir.  When none is found the run is skipped with a warning, but fails
when CI=true.

    python3 tools/core_lines.py [--venv-only]
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import time

from pythons import find_python, works  # tools/pythons.py: this script's directory is on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINE = '2.21'
PYTHON_VERSION = (3, 12)
VENV = ROOT / f'.venv-{LINE}'
REQS = ROOT / f'requirements-core-{LINE}.txt'
STAMP = VENV / '.installed'


def venv(python: str) -> None:
    """(Re)build the venv when the pinned requirements changed."""
    digest = hashlib.sha256(REQS.read_bytes()).hexdigest()
    if (STAMP.exists() and STAMP.read_text(encoding='utf-8').strip() == digest
            and works(str(VENV / 'bin' / 'python'), PYTHON_VERSION)):
        return
    print(f'core-lines: building {VENV.name} with {python} from {REQS.name}', flush=True)
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([python, '-m', 'venv', str(VENV)], check=True)
    subprocess.run([str(VENV / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet', '-r', str(REQS)], check=True)
    STAMP.write_text(digest + '\n', encoding='utf-8')


def run(cmd: list[str], **extra_env: str) -> bool:
    print('+ ' + ' '.join(cmd), flush=True)
    start = time.monotonic()
    # the venv's tools first (ansible-doc, ansible-playbook, ... of this line)
    env = dict(os.environ, PATH=os.pathsep.join([str(VENV / 'bin'), os.environ.get('PATH', '')]))
    env.pop('VIRTUAL_ENV', None)
    env.update(extra_env)
    done = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    print(f'core-lines: {" ".join(cmd[:2])} ... exit {done.returncode} in {time.monotonic() - start:.0f} s', flush=True)
    return done.returncode == 0


def main(argv: list[str]) -> int:
    python = find_python(PYTHON_VERSION)
    if python is None:
        message = 'core-lines: no Python %d.%d found (set PYTHON312=/path/to/python3.12)' % PYTHON_VERSION
        if os.environ.get('CI', '').lower() == 'true':
            print(message + '; required under CI=true', file=sys.stderr)
            return 1
        print(f'WARNING: {message}; skipping the ansible-core {LINE} line', file=sys.stderr)
        return 0
    venv(python)
    if '--venv-only' in argv:
        return 0
    bindir = VENV / 'bin'
    subprocess.run([str(bindir / 'ansible'), '--version'], check=True)
    # pytest exits 5 when it collected nothing: that fails too
    unit = run([str(bindir / 'pytest'), 'tests/unit', '-q', '-p', 'no:cacheprovider'])
    sanity = run([str(bindir / 'python'), 'tools/sanity.py'], SANITY_BUILD=str(ROOT / '.build' / f'core-{LINE}'))
    return 0 if unit and sanity else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
