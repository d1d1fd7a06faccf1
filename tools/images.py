"""Build the Debian images extensions/molecule/default boots, when they are missing.

Each image is a Debian rootfs made by ``debootstrap --variant=minbase`` from
Debian's own packages (systemd as PID 1, python3 for Ansible, and Debian's
prometheus-node-exporter, whose textfile collector the port_monitor role feeds),
imported with ``podman import`` as ``localhost/tcpstack-debian:<suite>`` with
CMD /sbin/init.  The image carries its package list as the label
``tcpstack.packages``: an image present with the same list is reused, one
built from another list is rebuilt; ``--force`` rebuilds.
Suites are built in parallel.  Needs root, podman and debootstrap
(tools/hostdeps.py installs them).

    CONTAINERS_CONF=extensions/molecule/containers.conf python3 tools/images.py [--force] [bookworm trixie]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUITES = ('bookworm', 'trixie')
REPO = 'localhost/tcpstack-debian'
# sudo: playbooks use become as on real hosts; prometheus-node-exporter: the port_monitor scenario scrapes it
PACKAGES = 'systemd,systemd-sysv,python3,procps,iproute2,dbus,sudo,prometheus-node-exporter'
LABEL = 'tcpstack.packages'
DEFAULT_MIRROR = 'http://deb.debian.org/debian'


def mirror() -> str:
    """The Debian mirror apt uses on this machine (else deb.debian.org)."""
    if os.environ.get('DEBIAN_MIRROR'):
        return os.environ['DEBIAN_MIRROR']
    sources = [pathlib.Path('/etc/apt/sources.list')] + sorted(pathlib.Path('/etc/apt/sources.list.d').glob('*'))
    for path in sources:
        try:
            text = path.read_text(encoding='utf-8', errors='replace')
        except OSError:
            continue
        for url in re.findall(r'(?:^deb\s+(?:\[[^]]*\]\s+)?|^URIs:\s*)(\S+)', text, re.M):
            if re.search(r'/debian/?$', url) and 'security' not in url:
                return url.rstrip('/')
    return DEFAULT_MIRROR


def podman_env() -> dict:
    env = dict(os.environ)
    env.setdefault('CONTAINERS_CONF', str(ROOT / 'extensions' / 'molecule' / 'containers.conf'))
    return env


def present(tag: str) -> bool:
    """The image exists and was built from PACKAGES (its label says so)."""
    done = subprocess.run(['podman', 'image', 'inspect', '--format', '{{ index .Labels "%s" }}' % LABEL, tag],
                          env=podman_env(), capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.strip() == PACKAGES


def build(suite: str, url: str) -> str:
    """debootstrap the suite into a temporary directory and import it; return a line for the log."""
    tag = f'{REPO}:{suite}'
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f'tcpstack-{suite}-', dir=os.environ.get('TMPDIR', '/var/tmp')) as tmp:
        rootfs = pathlib.Path(tmp) / 'rootfs'
        log = pathlib.Path(tmp) / 'debootstrap.log'
        with open(log, 'w', encoding='utf-8') as out:
            done = subprocess.run(['debootstrap', '--variant=minbase', f'--include={PACKAGES}', suite, str(rootfs), url],
                                  stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f'debootstrap {suite} failed ({done.returncode}):\n' + log.read_text()[-3000:])
        # a container image: no apt caches, a machine-id that systemd fills in at boot
        for cache in (rootfs / 'var/cache/apt/archives').glob('*.deb'):
            cache.unlink()
        shutil.rmtree(rootfs / 'var/lib/apt/lists', ignore_errors=True)
        (rootfs / 'var/lib/apt/lists/partial').mkdir(parents=True, exist_ok=True)
        (rootfs / 'etc/machine-id').write_text('', encoding='utf-8')
        tar = subprocess.Popen(['tar', '-C', str(rootfs), '--numeric-owner', '--xattrs', '-c', '.'], stdout=subprocess.PIPE)
        imported = subprocess.run(['podman', 'import', '--change', 'CMD ["/sbin/init"]',
                                   '--change', 'ENV container=podman', '--change', 'STOPSIGNAL SIGRTMIN+3',
                                   '--change', f'LABEL {LABEL}={PACKAGES}',
                                   '--message', f'tcpstack.tuning molecule image, debootstrap {suite} from {url}',
                                   '-', tag], stdin=tar.stdout, env=podman_env(), capture_output=True, text=True, check=False)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise RuntimeError(f'podman import {tag} failed: {imported.stderr}')
    return f'images: built {tag} in {time.monotonic() - start:.0f} s'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--force', action='store_true', help='rebuild images that exist')
    parser.add_argument('suites', nargs='*', default=list(SUITES))
    args = parser.parse_args(argv)
    missing = [s for s in args.suites if args.force or not present(f'{REPO}:{s}')]
    for suite in sorted(set(args.suites) - set(missing)):
        print(f'images: {REPO}:{suite} present with the same packages, reused', flush=True)
    if not missing:
        return 0
    if os.geteuid() != 0:
        print('images: building needs root (debootstrap)', file=sys.stderr)
        return 1
    url = mirror()
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(missing)) as pool:
        futures = {pool.submit(build, suite, url): suite for suite in missing}
        for future in concurrent.futures.as_completed(futures):
            try:
                print(future.result(), flush=True)
            except Exception as exc:  # pylint: disable=broad-except
                print(f'images: {futures[future]}: {exc}', file=sys.stderr, flush=True)
                failed += 1
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
