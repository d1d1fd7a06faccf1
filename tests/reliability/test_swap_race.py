"""Issue 22, a confined sampler: the textfile directory swapped for a symbolic link while the sampler writes.

Debian's /var/lib/prometheus is prometheus:prometheus 0755, so the user prometheus can rename ``node-exporter``
away and put a symbolic link into a root-only directory in its place, as often as it likes.  Here a thread does
exactly that, as fast as it can, while the sampler's own write (port_monitor_service.write_atomically, the call
its loop makes) runs again and again on the real file system.  Whatever the interleaving, nothing may be created
in, renamed into or deleted from the root-only directory: every write lands in the real directory or is refused.
Before issue 22 the directory was checked only at start, and writes, renames and the stale-temporary cleanup went
by path: this test then finds the textfile in the root-only directory and root's temporary file gone.
"""

from __future__ import annotations

import os
import threading
import time

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import HostError
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_monitor import FILE_NAME
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_monitor_service import (
    parse_args,
    write_atomically,
)

WRITES = 3000  # enough for thousands of swaps to interleave with every step of the write
SECONDS = 20  # and a bound on the time, whatever this machine's speed


def swapper(textfile_dir, aside, secret, stop, swaps):
    """Swap ``textfile_dir`` for a link to ``secret`` and back until ``stop`` is set."""
    while not stop.is_set():
        os.rename(textfile_dir, aside)
        os.symlink(secret, textfile_dir)
        os.unlink(textfile_dir)
        os.rename(aside, textfile_dir)
        swaps.append(1)


def test_the_write_never_leaves_the_real_directory_while_it_is_swapped(tmp_path, figures):
    parent = tmp_path / "var" / "lib" / "prometheus"
    textfile_dir = parent / "node-exporter"
    textfile_dir.mkdir(parents=True)
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    roots_own = secret / (".%s.root.tmp" % FILE_NAME)
    roots_own.write_text("root's temporary file")
    options = parse_args(["--directory", str(textfile_dir)])  # checked once, at start, as the service does
    stop, swaps = threading.Event(), []
    thread = threading.Thread(target=swapper, args=(textfile_dir, parent / "aside", secret, stop, swaps))
    written = refused = 0
    thread.start()
    try:
        deadline = time.monotonic() + SECONDS
        for number in range(WRITES):
            if time.monotonic() > deadline:
                break
            try:
                write_atomically(options.directory, "tcpstack_run %d\n" % number)
                written += 1
            except (OSError, HostError):  # refused: the directory was a link (or was missing) at that moment
                refused += 1
            assert sorted(p.name for p in secret.iterdir()) == [roots_own.name], number
    finally:
        stop.set()
        thread.join()
    assert roots_own.read_text() == "root's temporary file"
    assert written > 0 and refused > 0 and len(swaps) > 100, (written, refused, len(swaps))
    # the real directory holds the textfile of the last write that went through, and no temporary file
    assert [p.name for p in textfile_dir.iterdir()] == [FILE_NAME]
    figures.add("security", checks=written + refused, faults=len(swaps))
