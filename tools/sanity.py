"""Run ``ansible-test sanity`` (every test, --local) on a staged copy.

1. Stage the collection into .build/ansible_collections/tcpstack/tuning.
2. Make ansible-test's pip bootstrap work without its download site:
   every sanity test runs in its own virtualenv under
   ~/.ansible/test/venv, seeded by "get-pip-<version>.py" fetched from
   ci-files.testing.ansible.com, which is unreachable here.  ansible-test
   uses ~/.ansible/test/cache/get_pip_<version>.py when it exists, so we put
   a small stand-in there that installs pip from a wheel pip downloads
   from PyPI.  A real get-pip file already in the cache is left alone.
3. ``ansible-test sanity --local --python <venv's X.Y> -v`` (all tests).
4. ``ansible-test sanity --local --test compile --python 3.9 -v`` so module
   code is proven to compile on Python 3.9.  The 3.9 interpreter is taken
   from $PYTHON39, a working python3.9 on PATH, or pyenv's versions dir
   (tools/pythons.py, shared with tools/core_lines.py).
   When none is found the step is skipped with a warning, but fails when
   CI=true.

Run it with the .venv interpreter: ``.venv/bin/python tools/sanity.py``.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import stage  # tools/stage.py, tools/pythons.py: this script's directory is on sys.path
from pythons import find_python

ROOT = stage.ROOT
# staging dir; tools/core_lines.py gives the second ansible-core line its own, so the lines never share one
BUILD = pathlib.Path(os.environ.get('SANITY_BUILD') or ROOT / '.build')
CACHE = pathlib.Path('~/.ansible/test/cache').expanduser()
MARKER = '# tcpstack.tuning get-pip stand-in'

SHIM = MARKER + '''
"""Stand-in for get-pip.py: install pip from a wheel in this directory.

ansible-test runs this as __main__ with get-pip's arguments
(e.g. "pip==24.2 --no-setuptools --no-wheel").
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WHEEL = os.path.join(HERE, {wheel!r})
sys.path.insert(0, WHEEL)

from pip._internal.cli.main import main  # noqa: E402

ARGS = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
sys.exit(main(['install', '--upgrade', '--force-reinstall', '--no-index',
               '--find-links', HERE] + ARGS))
'''


def ansible_test_pip_version() -> str:
    """Return the pip version ansible-test bootstraps into its venvs."""
    import ansible_test  # pylint: disable=import-outside-toplevel

    source = pathlib.Path(ansible_test.__file__).parent / '_internal' / 'python_requirements.py'
    match = re.search(r"pip='([0-9.]+)'", source.read_text(encoding='utf-8'))
    if not match:
        sys.exit(f'sanity: cannot find the pip version in {source}')
    return match.group(1)


def prepare_get_pip() -> None:
    """Put a get-pip stand-in and the pip wheel it installs in ansible-test's cache."""
    version = ansible_test_pip_version()
    script = CACHE / f"get_pip_{version.replace('.', '_')}.py"
    if script.exists() and MARKER not in script.read_text(encoding='utf-8', errors='replace'):
        return  # a genuine get-pip file: use it
    CACHE.mkdir(parents=True, exist_ok=True)
    wheel = f'pip-{version}-py3-none-any.whl'
    if not (CACHE / wheel).exists():
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
                        '--only-binary', ':all:', '-d', str(CACHE), f'pip=={version}'], check=True)
    script.write_text(SHIM.format(wheel=wheel), encoding='utf-8')


def ansible_test(collection: pathlib.Path, args: list[str], path: str) -> bool:
    """Run ansible-test in the staged collection; return True on success."""
    bindir = os.path.dirname(sys.executable)
    cmd = [os.path.join(bindir, 'ansible-test'), 'sanity', '--local', '-v'] + args
    print('+ ' + ' '.join(cmd), flush=True)
    env = dict(os.environ, PATH=path)
    result = subprocess.run(cmd, cwd=collection, env=env, check=False)
    if result.returncode:
        print(f'sanity: {" ".join(args)} failed (exit {result.returncode})', file=sys.stderr)
    return result.returncode == 0


def main() -> int:
    """Stage, prepare and run both sanity passes."""
    collection = stage.stage(BUILD)
    prepare_get_pip()

    # ansible-test looks interpreters up as pythonX.Y on PATH: put the
    # venv's first, and expose Python 3.9 under that one name only.
    pybin = BUILD / 'pybin'
    shutil.rmtree(pybin, ignore_errors=True)
    pybin.mkdir(parents=True)
    path = os.pathsep.join([os.path.dirname(sys.executable), str(pybin), os.environ.get('PATH', '')])

    version = f'{sys.version_info[0]}.{sys.version_info[1]}'
    ok = ansible_test(collection, ['--python', version], path)

    python39 = find_python((3, 9))
    if python39 is None:
        message = 'sanity: no Python 3.9 found (set PYTHON39=/path/to/python3.9)'
        if os.environ.get('CI', '').lower() == 'true':
            print(message + '; required under CI=true', file=sys.stderr)
            return 1
        print(f'WARNING: {message}; skipping the Python 3.9 compile test', file=sys.stderr)
    else:
        (pybin / 'python3.9').symlink_to(python39)
        ok = ansible_test(collection, ['--test', 'compile', '--python', '3.9'], path) and ok
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
