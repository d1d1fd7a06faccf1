"""The emulated Windows host of the simulator: its state and nothing else.

State: the registry (the keys the contract reads), the dynamic port range per
(ipv4|ipv6, tcp|udp), excluded port ranges, a TCP connection table, processes,
the System event log, the boot time and what the TCP/IP stack took into effect
at boot. The tools that read and change it (netsh, reg, wevtutil, the two
cmdlet pipelines) are in ``tools.py``; the script language is in ``script.py``.

Every rule cites the Microsoft documentation it follows.
"""

from __future__ import annotations

import copy
import datetime as _dt
import threading

UTC = _dt.timezone.utc

TCPIP_PARAMETERS = r"SYSTEM\CurrentControlSet\Services\Tcpip\Parameters"
CURRENT_VERSION = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion"

# Build numbers: learn.microsoft.com "Windows Server release information"
# (2016 14393, 2019 17763, 2022 20348, 2025 26100) and 2008 R2 SP1 = 7601.
# Get-NetTCPConnection is in the NetTCPIP module, which ships with Windows
# Server 2012 / Windows 8 and later (learn.microsoft.com powershell/module/nettcpip
# "Get-NetTCPConnection"): 2008 R2 does not have it.
PROFILES = {
    "server2008r2": {
        "build": 7601,
        "product": "Windows Server 2008 R2 Datacenter",
        "version": "6.1",
        "has_nettcpip": False,
    },
    "server2016": {"build": 14393, "product": "Windows Server 2016 Datacenter", "version": "6.3", "has_nettcpip": True},
    "server2019": {"build": 17763, "product": "Windows Server 2019 Datacenter", "version": "6.3", "has_nettcpip": True},
    "server2022": {"build": 20348, "product": "Windows Server 2022 Datacenter", "version": "6.3", "has_nettcpip": True},
    "server2025": {"build": 26100, "product": "Windows Server 2025 Datacenter", "version": "6.3", "has_nettcpip": True},
    # Windows 11 25H2 (build 26200): a client build whose netsh pads the show dynamicportrange labels to 18
    # columns and prints no blank line before the title (a public capture of that build, see README "Layouts").
    "client26200": {"build": 26200, "product": "Windows 11 Pro", "version": "6.3", "has_nettcpip": True},
}

# How netsh lays out its tables, per profile (README "Layouts" gives the captures):
# - "dyn_label_width": the width the show dynamicportrange labels are padded to (16 "Number of Ports " on most
#   builds, 18 on 26200); "dyn_blank_first": a blank line before the title (not on 26200);
# - "excl_padding": the English show excludedportrange header and non-administered rows carry six spaces of
#   padding for the empty "*" column (seen on some builds; which ones is UNCONFIRMED, so two profiles have it).
LAYOUTS = {
    "client26200": {"dyn_label_width": 18, "dyn_blank_first": False, "excl_padding": True},
    "server2022": {"dyn_label_width": 16, "dyn_blank_first": True, "excl_padding": True},
}
DEFAULT_LAYOUT = {"dyn_label_width": 16, "dyn_blank_first": True, "excl_padding": False}

# Dynamic ranges that installers leave behind (README "Excluded ranges"): the Visual Studio installer on the
# GitHub runner images set start 1024 with 64,511 ports (actions/runner-images#1442, Configure-DynamicPort.ps1);
# Windows 10/11 machines show start 1024 with 13,977 ports in public captures.
INSTALLER_RANGES = {"visual-studio": (1024, 64511), "windows-1024-13977": (1024, 13977)}

# WinNAT (the NAT of Hyper-V, WSL 2 and Docker Desktop) reserves its ports when it starts, at boot: blocks of
# 100 ports (the usual size in captures) carved from the *current* dynamic range, listed by show
# excludedportrange without "*", elsewhere after each reboot (from 1025 upward when the range starts at 1024),
# gone after "net stop winnat" (docker/for-win#3171, microsoft/WSL#5306, chocolatey-test-environment#68).
# Where exactly a block lands is Windows' choice; the simulator's rule (a start that moves by 300 ports per
# boot, skipping ports already excluded or listened on) is a model, not Windows' algorithm.
WINNAT_BLOCK = 100

LANGUAGES = ("en-US", "de-DE")

# KB929851 "The default dynamic port range for TCP/IP has changed since Windows
# Vista and in Windows Server 2008": start 49152, end 65535 (16384 ports), set
# separately per transport and per IP version.
DEFAULT_DYNAMIC_RANGE = (49152, 16384)
IP_VERSIONS = ("ipv4", "ipv6")
PROTOCOLS = ("tcp", "udp")

# Values read by the TCP/IP driver at start-up only (learn.microsoft.com
# "Settings that can be modified to improve network performance" (BizTalk docs)
# and KB314053 "TCP/IP and NBT configuration parameters": "a restart is
# required"). Absent means the documented default.
BOOT_TIME_VALUES = ("TcpTimedWaitDelay", "MaxUserPort")
BOOT_TIME_DEFAULTS = {"TcpTimedWaitDelay": 120, "MaxUserPort": 5000}

# MSFT_NetTCPConnection State enumeration (learn.microsoft.com
# "MSFT_NetTCPConnection class"); Get-NetTCPConnection prints the names.
TCP_STATES = (
    "Closed",
    "Listen",
    "SynSent",
    "SynReceived",
    "Established",
    "FinWait1",
    "FinWait2",
    "CloseWait",
    "Closing",
    "LastAck",
    "TimeWait",
    "DeleteTCB",
    "Bound",
)

REG_TYPES = ("REG_SZ", "REG_EXPAND_SZ", "REG_MULTI_SZ", "REG_DWORD", "REG_QWORD", "REG_BINARY", "REG_NONE")


def _default_registry(profile, hostname):
    """The keys the simulator knows, as a fresh Windows Server install has them."""
    info = PROFILES[profile]
    params = [
        ("NV Hostname", "REG_SZ", hostname),
        ("DataBasePath", "REG_EXPAND_SZ", r"%SystemRoot%\System32\drivers\etc"),
        ("NameServer", "REG_SZ", ""),
        ("ForwardBroadcasts", "REG_DWORD", 0),
        ("IPEnableRouter", "REG_DWORD", 0),
        ("Domain", "REG_SZ", ""),
        ("Hostname", "REG_SZ", hostname),
        ("SearchList", "REG_SZ", ""),
        ("UseDomainNameDevolution", "REG_DWORD", 1),
        ("EnableICMPRedirect", "REG_DWORD", 1),
        ("DeadGWDetectDefault", "REG_DWORD", 1),
        ("DontAddDefaultGatewayDefault", "REG_DWORD", 0),
        ("ICSDomain", "REG_SZ", "mshome.net"),
        ("SyncDomainWithMembership", "REG_DWORD", 1),
        ("NV Domain", "REG_SZ", ""),
    ]
    version = [
        ("SystemRoot", "REG_SZ", r"C:\Windows"),
        ("BuildBranch", "REG_SZ", "rs1_release" if info["build"] == 14393 else "release"),
        ("CurrentBuild", "REG_SZ", str(info["build"])),
        ("CurrentBuildNumber", "REG_SZ", str(info["build"])),
        ("CurrentType", "REG_SZ", "Multiprocessor Free"),
        ("CurrentVersion", "REG_SZ", info["version"]),
        ("EditionID", "REG_SZ", "ServerDatacenter"),
        ("InstallationType", "REG_SZ", "Server"),
        ("ProductName", "REG_SZ", info["product"]),
    ]
    return {
        TCPIP_PARAMETERS: {
            "values": [list(v) for v in params],
            "subkeys": ["Adapters", "DNSRegisteredAdapters", "Interfaces", "NsiObjectSecurity", "PersistentRoutes", "Winsock"],
        },
        CURRENT_VERSION: {"values": [list(v) for v in version], "subkeys": []},
    }


def _default_processes():
    return [
        {"Id": 0, "ProcessName": "Idle"},
        {"Id": 4, "ProcessName": "System"},
        {"Id": 560, "ProcessName": "wininit"},
        {"Id": 636, "ProcessName": "services"},
        {"Id": 660, "ProcessName": "lsass"},
        {"Id": 784, "ProcessName": "svchost"},
        {"Id": 1488, "ProcessName": "spoolsv"},
        {"Id": 2212, "ProcessName": "svchost"},
    ]


def _default_services():
    # Win32_Service instances of a fresh server, as (ProcessId, Name): a running service carries the id of the
    # process it runs in, several share one svchost (RpcEptMapper and RpcSs, "Share Process"); a stopped one has
    # ProcessId 0 (learn.microsoft.com cimwin32prov "Win32_Service class": ProcessId, "Process identifier of the
    # service", Name, "Unique identifier of the service"). Which services a real server runs differs.
    return [
        {"ProcessId": 784, "Name": "RpcEptMapper"},
        {"ProcessId": 784, "Name": "RpcSs"},
        {"ProcessId": 1488, "Name": "Spooler"},
        {"ProcessId": 2212, "Name": "WinRM"},
        {"ProcessId": 0, "Name": "W3SVC"},
        {"ProcessId": 0, "Name": "wuauserv"},
    ]


def _default_connections():
    # What a fresh Server install listens on: RPC endpoint mapper (135, svchost),
    # SMB (445, System), WinRM HTTP (5985, System/HTTP.sys), and the RPC dynamic
    # listeners of wininit/services/lsass/spoolsv at the bottom of the dynamic range.
    rows = [
        ("0.0.0.0", 135, "0.0.0.0", 0, "Listen", 784),
        ("0.0.0.0", 445, "0.0.0.0", 0, "Listen", 4),
        ("0.0.0.0", 5985, "0.0.0.0", 0, "Listen", 4),
        ("0.0.0.0", 49664, "0.0.0.0", 0, "Listen", 560),
        ("0.0.0.0", 49665, "0.0.0.0", 0, "Listen", 660),
        ("0.0.0.0", 49666, "0.0.0.0", 0, "Listen", 1488),
        ("0.0.0.0", 49667, "0.0.0.0", 0, "Listen", 636),
        ("::", 135, "::", 0, "Listen", 784),
        ("::", 445, "::", 0, "Listen", 4),
        ("::", 5985, "::", 0, "Listen", 4),
    ]
    keys = ("LocalAddress", "LocalPort", "RemoteAddress", "RemotePort", "State", "OwningProcess")
    return [dict(zip(keys, r)) for r in rows]


class WindowsHost:
    """One emulated Windows Server.

    ``host_state`` (optional dict, JSON-compatible) overrides the defaults:
    ``hostname``; ``registry`` {name: [type, data]} for Tcpip\\Parameters values
    (in effect since boot, as if set before the last restart);
    ``dynamic_ranges`` {"ipv4/tcp": [start, num], ...}; ``excluded`` [{ip, proto,
    start, end, administered}]; ``connections`` [{LocalAddress, LocalPort,
    RemoteAddress, RemotePort, State, OwningProcess}] (replaces the defaults);
    ``processes`` [{Id, ProcessName}] (added to the defaults); ``services``
    [{ProcessId, Name}] (added to the defaults; ProcessId 0: stopped); ``events``
    [{event_id, seconds_ago}].
    """

    def __init__(self, profile="server2022", language="en-US", host_state=None, clock=None):
        if profile not in PROFILES:
            raise ValueError("unknown profile %r (known: %s)" % (profile, ", ".join(sorted(PROFILES))))
        if language not in LANGUAGES:
            raise ValueError("unknown language %r (known: %s)" % (language, ", ".join(LANGUAGES)))
        state = copy.deepcopy(host_state or {})
        self.profile = profile
        self.language = language
        self._clock = clock or (lambda: _dt.datetime.now(UTC))
        self.lock = threading.RLock()
        self.hostname = state.get("hostname", "WIN-SIM-%s" % profile.upper())
        # %SystemRoot% of a default install (about_Environment_Variables); the tools live in its System32.
        self.system_root = "C:\\Windows"
        # Programs planted on PATH before System32 (tools.run_planted), and what they were asked to do.
        self.planted = set(state.get("planted_on_path", ()))
        self.planted_runs = []
        self._registry = _default_registry(profile, self.hostname)
        for name, (rtype, data) in state.get("registry", {}).items():
            self.set_registry(name, rtype, data)
        # netsh keeps an active and a persistent store ("netsh interface" docs,
        # store=active|persistent; set defaults to persistent, which also
        # applies at once: KB929851).
        self._persistent_ranges = {(ip, p): DEFAULT_DYNAMIC_RANGE for ip in IP_VERSIONS for p in PROTOCOLS}
        for key, (start, num) in state.get("dynamic_ranges", {}).items():
            ip, proto = key.split("/")
            self._persistent_ranges[(ip, proto)] = (int(start), int(num))
        self._active_ranges = dict(self._persistent_ranges)
        if state.get("installer_range"):
            self.apply_installer_range(state["installer_range"])
        self.excluded = []
        for row in state.get("excluded", []):
            self.add_excluded(row["start"], row["end"], ip=row.get("ip", "ipv4"), proto=row.get("proto", "tcp"),
                              administered=row.get("administered", False))
        self.boots = 0
        self.winnat_blocks = int(state.get("winnat_blocks", 0))  # blocks of 100 per IP version; 0: no WinNAT
        self.winnat_running = self.winnat_blocks > 0
        self.connections = []
        for row in state.get("connections", _default_connections()):
            self.add_connection(**row)
        self.processes = _default_processes()
        for row in state.get("processes", []):
            self.add_process(row["Id"], row["ProcessName"])
        self.services = _default_services()
        for row in state.get("services", []):
            self.add_service(row["Name"], row.get("ProcessId", 0))
        self.events = []
        self._next_record = 1000
        self.boot_time = self.now() - _dt.timedelta(days=3)
        for row in state.get("events", []):
            self.add_event(row["event_id"], self.now() - _dt.timedelta(seconds=row.get("seconds_ago", 0)))
        self.effective = {}
        self._take_boot_values()
        self._carve_winnat()

    def plant_on_path(self, program):
        """Put a fake ``program``.exe (netsh, reg, wevtutil) in a PATH folder searched before System32."""
        with self.lock:
            self.planted.add(program)

    # -- time ---------------------------------------------------------------
    def now(self):
        return self._clock()

    @property
    def build(self):
        return PROFILES[self.profile]["build"]

    @property
    def has_nettcpip(self):
        return PROFILES[self.profile]["has_nettcpip"]

    # -- registry -----------------------------------------------------------
    def _key(self, path, create=False):
        """The key dict for ``path`` (without the HKLM root), case-insensitively."""
        norm = path.strip("\\").lower()
        for name, key in self._registry.items():
            if name.lower() == norm:
                return key
        if create:
            key = {"values": [], "subkeys": []}
            self._registry[path.strip("\\")] = key
            return key
        return None

    def ensure_key(self, path):
        self._key(path, create=True)

    def key_values(self, path):
        key = self._key(path)
        return None if key is None else [tuple(v) for v in key["values"]]

    def key_subkeys(self, path):
        key = self._key(path)
        return None if key is None else list(key["subkeys"])

    def get_value(self, path, name):
        key = self._key(path)
        if key is None:
            return None
        for v in key["values"]:
            if v[0].lower() == name.lower():
                return tuple(v)
        return None

    def put_value(self, path, name, rtype, data):
        if rtype not in REG_TYPES:
            raise ValueError("unknown registry type %r" % rtype)
        if rtype in ("REG_DWORD", "REG_QWORD"):
            data = int(data)
            limit = 0xFFFFFFFF if rtype == "REG_DWORD" else 0xFFFFFFFFFFFFFFFF
            if not 0 <= data <= limit:
                raise ValueError("%s out of range: %r" % (rtype, data))
        key = self._key(path, create=True)
        for v in key["values"]:
            if v[0].lower() == name.lower():
                v[1], v[2] = rtype, data
                return
        key["values"].append([name, rtype, data])

    def remove_value(self, path, name):
        key = self._key(path)
        if key is None:
            return False
        for i, v in enumerate(key["values"]):
            if v[0].lower() == name.lower():
                del key["values"][i]
                return True
        return False

    def registry_value(self, name, key=TCPIP_PARAMETERS):
        """The data of a value (under Tcpip\\Parameters unless ``key``), or None."""
        found = self.get_value(key, name)
        return None if found is None else found[2]

    def registry_type(self, name, key=TCPIP_PARAMETERS):
        found = self.get_value(key, name)
        return None if found is None else found[1]

    def set_registry(self, name, rtype, data, key=TCPIP_PARAMETERS):
        """Write a value directly (as an administrator or installer would), no reboot."""
        with self.lock:
            self.put_value(key, name, rtype, data)

    def delete_registry(self, name, key=TCPIP_PARAMETERS):
        with self.lock:
            return self.remove_value(key, name)

    # -- boot -----------------------------------------------------------------
    def _take_boot_values(self):
        self.effective = {name: self._dword_or_none(name) for name in BOOT_TIME_VALUES}

    def _dword_or_none(self, name):
        found = self.get_value(TCPIP_PARAMETERS, name)
        if found is None or found[1] != "REG_DWORD":
            return None
        return found[2]

    def effective_value(self, name):
        """What the stack uses now: the value read at the last boot, else the documented default."""
        value = self.effective.get(name)
        return BOOT_TIME_DEFAULTS[name] if value is None else value

    def snapshot(self):
        """A deep copy of everything win_tcp could change: the registry, the persistent and active dynamic ranges,
        the excluded ranges and the values in effect since the last boot (for before/after comparisons)."""
        with self.lock:
            return copy.deepcopy({"registry": self._registry, "persistent": self._persistent_ranges,
                                  "active": self._active_ranges, "excluded": self.excluded,
                                  "effective": self.effective})

    def reboot(self):
        """Restart: registry values read at boot take effect; the active netsh store
        is reloaded from the persistent one; connections are gone (listeners stay,
        the services start again); the event log survives."""
        with self.lock:
            self._take_boot_values()
            self._active_ranges = dict(self._persistent_ranges)
            # the persistent store is loaded again; active-only changes and WinNAT's blocks are gone
            self.excluded = [dict(e, active=True) for e in self.excluded if e["persistent"] and not e.get("winnat")]
            self.connections = [c for c in self.connections if c["State"] == "Listen"]
            self.boot_time = self.now()
            self.boots += 1
            self._carve_winnat()

    @property
    def layout(self):
        return LAYOUTS.get(self.profile, DEFAULT_LAYOUT)

    def apply_installer_range(self, name):
        """Set the TCP dynamic range of both IP versions as an installer leaves it (INSTALLER_RANGES)."""
        start, num = INSTALLER_RANGES[name]
        for ip in IP_VERSIONS:
            self.set_dynamic_range(start, num, ip=ip, proto="tcp")

    # -- WinNAT -----------------------------------------------------------------
    def _carve_winnat(self):
        """WinNAT starts: reserve ``winnat_blocks`` blocks of WINNAT_BLOCK ports in each IP version's current TCP
        dynamic range (see WINNAT_BLOCK for the sources), skipping excluded and listening ports."""
        with self.lock:
            self.excluded = [e for e in self.excluded if not e.get("winnat")]
            if not self.winnat_running:
                return
            listening = {c["LocalPort"] for c in self.connections if c["State"] == "Listen"}
            for ip in IP_VERSIONS:
                start, num = self._active_ranges[(ip, "tcp")]
                high = min(start + num - 1, 65535)
                taken = [(e["start"], e["end"]) for e in self.excluded if e["ip"] == ip and e["proto"] == "tcp"]
                span = max(1, (high - start) // WINNAT_BLOCK)
                low = start + 1 + ((self.boots * 3) % span) * WINNAT_BLOCK
                placed = 0
                for dummy in range(2 * span + 2):  # bounded: every candidate once, wrapping around
                    if placed == self.winnat_blocks:
                        break
                    if low + WINNAT_BLOCK - 1 > high:
                        low = start + 1
                    end = low + WINNAT_BLOCK - 1
                    if end <= high and not any(a <= end and low <= b for a, b in taken) \
                            and not any(low <= port <= end for port in listening):
                        self.excluded.append({"ip": ip, "proto": "tcp", "start": low, "end": end, "administered": False,
                                              "persistent": False, "active": True, "winnat": True})
                        taken.append((low, end))
                        placed += 1
                    low = end + 1

    def stop_winnat(self):
        """``net stop winnat``: its reservations vanish at once."""
        with self.lock:
            self.winnat_running = False
            self._carve_winnat()

    def start_winnat(self, blocks=None):
        """``net start winnat``: it reserves its blocks again, from the range as it is now."""
        with self.lock:
            if blocks is not None:
                self.winnat_blocks = int(blocks)
            self.winnat_running = True
            self._carve_winnat()

    # -- dynamic port range --------------------------------------------------
    @staticmethod
    def _check_ip_proto(ip, proto):
        if ip not in IP_VERSIONS or proto not in PROTOCOLS:
            raise ValueError("ip must be ipv4|ipv6 and proto tcp|udp, not %r/%r" % (ip, proto))

    def dynamic_range(self, ip="ipv4", proto="tcp", store="active"):
        """(start, number of ports) in effect (``store="persistent"``: what the next boot loads)."""
        self._check_ip_proto(ip, proto)
        ranges = self._active_ranges if store == "active" else self._persistent_ranges
        return ranges[(ip, proto)]

    def set_dynamic_range(self, start, num, ip="ipv4", proto="tcp", store="persistent"):
        """Set the range directly, without netsh's validation (e.g. start=1024 num=64511
        as some installers leave it). ``store="persistent"`` also applies it at once."""
        self._check_ip_proto(ip, proto)
        with self.lock:
            self._active_ranges[(ip, proto)] = (int(start), int(num))
            if store == "persistent":
                self._persistent_ranges[(ip, proto)] = (int(start), int(num))

    # -- excluded port ranges ------------------------------------------------
    def add_excluded(self, start, end, ip="ipv4", proto="tcp", administered=False, persistent=True):
        """Reserve ports start..end. ``administered`` marks a range added with
        ``netsh int ipv4 add excludedportrange`` (shown with ``*``); the others
        stand for reservations made by Hyper-V / WinNAT at run time."""
        self._check_ip_proto(ip, proto)
        if not 1 <= int(start) <= int(end) <= 65535:
            raise ValueError("bad excluded range %r-%r" % (start, end))
        with self.lock:
            self.excluded.append({"ip": ip, "proto": proto, "start": int(start), "end": int(end),
                                  "administered": bool(administered), "persistent": bool(persistent), "active": True})

    def find_excluded(self, start, end, ip="ipv4", proto="tcp", store="active"):
        """The entry start-end of (ip, proto) in ``store`` (active: listed now; persistent: loaded at boot)."""
        for entry in self.excluded:
            if (entry["ip"], entry["proto"], entry["start"], entry["end"]) == (ip, proto, start, end) \
                    and entry["active" if store == "active" else "persistent"]:
                return entry
        return None

    def clear_excluded(self, ip=None, proto=None):
        with self.lock:
            self.excluded = [e for e in self.excluded
                             if (ip is not None and e["ip"] != ip) or (proto is not None and e["proto"] != proto)]

    def excluded_ranges(self, ip="ipv4", proto="tcp", store="active"):
        """[(start, end, administered)] sorted by start, as netsh lists them (``store="persistent"``: what the next
        boot loads, WinNAT's blocks not included)."""
        key = "active" if store == "active" else "persistent"
        rows = [(e["start"], e["end"], e["administered"]) for e in self.excluded
                if e["ip"] == ip and e["proto"] == proto and e[key]]
        return sorted(rows)

    # -- connections and processes -------------------------------------------
    def add_connection(self, LocalAddress, LocalPort, RemoteAddress="0.0.0.0", RemotePort=0, State="Established",
                       OwningProcess=4):  # noqa: N803 (the cmdlet's property names)
        if State not in TCP_STATES:
            raise ValueError("State must be one of %s" % ", ".join(TCP_STATES))
        with self.lock:
            self.connections.append({"LocalAddress": str(LocalAddress), "LocalPort": int(LocalPort),
                                     "RemoteAddress": str(RemoteAddress), "RemotePort": int(RemotePort),
                                     "State": State, "OwningProcess": int(OwningProcess)})

    def clear_connections(self):
        with self.lock:
            self.connections = []

    def add_process(self, pid, name):
        with self.lock:
            self.processes = [p for p in self.processes if p["Id"] != int(pid)]
            self.processes.append({"Id": int(pid), "ProcessName": str(name)})

    def add_service(self, name, pid=0):
        """A service ``name`` running in process ``pid`` (0: stopped); replaces a service of that name."""
        with self.lock:
            self.services = [s for s in self.services if s["Name"].lower() != str(name).lower()]
            self.services.append({"ProcessId": int(pid), "Name": str(name)})

    @property
    def has_cim(self):
        """Get-CimInstance needs PowerShell 3.0 (Windows Server 2012; Server 2008 R2 ships 2.0)."""
        return self.has_nettcpip

    # -- event log ----------------------------------------------------------
    def add_event(self, event_id, when=None, provider="Tcpip", data=()):
        """Log an event in System. ``when``: aware datetime (UTC), naive = UTC, or
        None for now."""
        if when is None:
            when = self.now()
        elif when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        with self.lock:
            self._next_record += 1
            self.events.append({"event_id": int(event_id), "time": when.astimezone(UTC), "provider": provider,
                                "record_id": self._next_record, "data": list(data)})
