"""tests.support: the one library the tests, bench/ and demo/ share.

    collection   where this checkout is the collection tcpstack.tuning (a link made by collections_path())
    ci           skip locally, fail under CI=true
    netns        Sandbox: a throwaway Linux host (a network namespace with its own sysctl.d); TCP_KEYS
    veth         ClientServer: two sandboxes joined by a veth pair, with a server in one of them
    churn        THE churn program: bounded test traffic (servers, churns, holders), one standard-library file
                 run by its path (molecule copies it into its containers)
    traffic      program(): churn.py's command line, run inside namespaces; final_report()
    playbook     ansible-playbook and the callback that records every task result
    fleet        fleet_hosts(): the inventory of a mixed fleet (sandboxes, simulators); run_fleet()
    windows_sim  the Windows host simulator (WinRM and SSH endpoints in front of an emulated Windows Server)

Import from the repository root (pytest.ini puts it and the collection on pytest's path; bench and demo run as
``python -m bench.run``, ``python -m demo.demo`` with the collection on PYTHONPATH, as ``make bench``/``make demo``
do)::

    from tests.support.netns import Sandbox
    from tests.support.windows_sim import Simulator

Importing this package imports nothing else: ``python -m tests.support.collection`` needs only the standard
library.
"""
