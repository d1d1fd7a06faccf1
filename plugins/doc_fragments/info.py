# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the read-only audit modules (port_usage_info, win_port_usage_info) share: they change nothing.

Each module names its platform itself; Ansible merges those keys over these.
"""

from __future__ import annotations


class ModuleDocFragment:
    """extends_documentation_fragment: tcpstack.tuning.info"""

    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description: The module never changes anything; it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  platform:
    support: full
"""
