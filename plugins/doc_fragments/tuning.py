# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the tuning modules (linux_tcp, win_tcp) share: the state option and full check and diff mode support.

Each module describes O(state) and each attribute itself (what present and absent do there, what check mode
reads, what the diff shows); Ansible merges those keys over these.
"""

from __future__ import annotations


class ModuleDocFragment:
    """extends_documentation_fragment: tcpstack.tuning.tuning"""

    DOCUMENTATION = r"""
options:
  state:
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    support: full
"""
