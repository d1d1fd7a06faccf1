#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# This file only documents the module; the code is the action plugin plugins/action/check_role_vars.py,
# which runs on the controller; the checks are plugins/plugin_utils/role_vars.py.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: check_role_vars
short_description: Check the variables of the tcp_tuning, port_audit or port_monitor role on the controller
version_added: "0.2.0"
description:
  - The first task of the roles C(tcpstack.tuning.tcp_tuning), C(tcpstack.tuning.port_audit) and
    C(tcpstack.tuning.port_monitor). It reads the role's variables as the play has them for this host, checks them
    with the same checks the modules make (M(tcpstack.tuning.linux_tcp), M(tcpstack.tuning.win_tcp),
    M(tcpstack.tuning.port_usage_info), M(tcpstack.tuning.win_port_usage_info)), and returns the platform and the
    module options the role passes on.
  - For C(port_monitor) it checks the sampler's settings (interval 1-3600 s, top 1-100, the thresholds as
    M(tcpstack.tuning.port_usage_info) checks them, the process sample below the interval, absolute plain paths)
    and refuses a Windows host, which the role does not support.
  - Runs on the controller only and never contacts the host, so a bad variable fails before the host is touched.
    The error names the variable as it was written (for example C(tcp_tuning_port_range) or
    C(tcp_tuning_linux.persist_file)), its value and what is valid.
  - Decides the platform without facts, from C(<role>_platform) or, for V(auto), from C(ansible_connection) (winrm,
    psrp), C(ansible_shell_type) (powershell, cmd) or C(ansible_os_family) when facts were gathered.
  - Warns about variables that start with the role's prefix but are not the role's (a misspelt name), and about
    deprecated ones (C(tcp_tuning_time_wait)).
  - For a Windows host with C(tcp_tuning_reboot=if_required), fails unless the collection C(ansible.windows) is
    installed on the controller, saying how to install it; nothing else needs another collection.
author:
  - tcpstack.tuning contributors (@tcpstack)
options:
  role:
    description: Which role's variables to check.
    type: str
    required: true
    choices: [tcp_tuning, port_audit, port_monitor]
attributes:
  check_mode:
    support: full
    description: It only reads variables, in check mode as otherwise.
  diff_mode:
    support: none
    description: It changes nothing.
  platform:
    support: full
    platforms: [posix, windows]
    description: It runs on the controller, for Linux and Windows hosts alike.
notes:
  - The roles call it themselves; you need it only to check the variables of a play without running the role.
"""

EXAMPLES = r"""
- name: Check tcp_tuning's variables for every host without touching any
  tcpstack.tuning.check_role_vars:
    role: tcp_tuning
  register: checked

- name: Show what linux_tcp or win_tcp would be called with
  ansible.builtin.debug:
    msg: "{{ 'win_tcp' if checked.windows else 'linux_tcp' }} {{ checked.options }}"
"""

RETURN = r"""
windows:
  description: Whether the role treats this host as Windows.
  returned: success
  type: bool
  sample: false
options:
  description:
    - The options the role passes to its module on this host, C(state) included. For C(tcp_tuning), those of
      M(tcpstack.tuning.win_tcp) on Windows and of M(tcpstack.tuning.linux_tcp) otherwise; for C(port_audit),
      those of M(tcpstack.tuning.win_port_usage_info) or M(tcpstack.tuning.port_usage_info). For C(port_monitor),
      the sampler's settings C(state), C(interval), C(textfile_dir), C(top), C(warning_percent),
      C(critical_percent), C(processes), C(process_sample_seconds), C(python) and C(rules_dir) (V('') when the
      alert rules are not installed).
  returned: success
  type: dict
  sample: {"state": "present", "fin_timeout": 30, "port_range": [32768, 65535], "tw_reuse": 1,
           "reserve_listening_ports": true}
variable:
  description: The variable that is not valid, as it was written.
  returned: failure
  type: str
  sample: tcp_tuning_port_range
"""
