"""windows_sim: a Windows host simulator for the tcpstack.tuning tests.

No Windows can run here, so this package stands in for one: a WS-Management
(WinRM) endpoint on 127.0.0.1 that pywinrm and Ansible's winrm connection talk
to, in front of an emulated Windows Server that runs the restricted PowerShell
script language and the Windows tools (netsh, reg, wevtutil, two cmdlet
pipelines) of docs/windows_commands.md. It is a simulator: it models the
documented behaviour of those tools and never knows about our plugins.

Import it from the repository root (pytest.ini puts the root on pytest's path)::

    from tests.support.windows_sim import Simulator

See README.md.
"""

from .host import PROFILES, WindowsHost
from .simulator import PASSWORD, USER, Faults, Simulator

__all__ = ["Faults", "PASSWORD", "PROFILES", "Simulator", "USER", "WindowsHost"]
