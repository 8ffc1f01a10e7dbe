"""Network guard for every Python process the tests start: on PYTHONPATH (see tests.helpers.guarded_env),
Python imports this at start-up; an audit hook then refuses (OSError) and logs to $MEDPIPE_NETGUARD_LOG
every connection, datagram or name lookup that leaves the loopback interface.

Not a sandbox: a process started with -I/-E, a PYTHONPATH of its own, or a non-Python program is not
covered (tests/flows/test_offline_children.py runs medpipe in a network namespace for that).
"""

import ipaddress
import os
import socket
import sys

EVENTS = {"socket.connect", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"}
LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _external(host: object) -> bool:
    """Whether `host` (an address or a name; None and port-only lookups are local) leaves loopback."""
    if host is None or isinstance(host, int):
        return False
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").lower()
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return False
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return True  # any other host name would need a DNS lookup
    return not (address.is_loopback or address.is_unspecified)


def _destination(event: str, args: tuple) -> object:
    """The remote host of an audited call, or None when it is not an internet socket or lookup."""
    if event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
            return None  # AF_UNIX, netlink, ...
        return address[0]
    return args[0] if args else None


def _hook(event: str, args: tuple) -> None:
    if event not in EVENTS:
        return
    host = _destination(event, args)
    if not _external(host):
        return
    argv0 = (getattr(sys, "argv", None) or ["?"])[0] or "?"
    line = f"{event} {host!r} pid={os.getpid()} argv0={argv0}\n"
    log = os.environ.get("MEDPIPE_NETGUARD_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(line)
    raise OSError(f"medpipe tests are offline: refused {line.strip()}")


sys.addaudithook(_hook)
