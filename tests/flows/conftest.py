"""Fixtures for end-to-end runs: a guard that fails any test whose code tries to leave 127.0.0.1."""

import ipaddress
import socket

import pytest


def _external(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if not isinstance(host, str) or host in ("localhost", ""):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name other than localhost


def guard_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse every connection or DNS lookup to a non-loopback host while `monkeypatch` is active.

    Returns:
        The attempts refused (filled in as they happen).
    """
    attempts: list[str] = []
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and _external(address):
            attempts.append(f"connect {address}")
            raise OSError(f"medpipe tests are offline: refused connection to {address}")
        return connect(self, address)

    def guarded_lookup(host, *args, **kwargs):
        if _external((host,)):
            attempts.append(f"lookup {host}")
            raise socket.gaierror(f"medpipe tests are offline: refused lookup of {host}")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    return attempts


@pytest.fixture(autouse=True)
def offline_guard(monkeypatch):
    """Record (and refuse) every connection or DNS lookup to a non-loopback host during the test (module
    fixtures that run flows guard themselves with guard_network)."""
    attempts = guard_network(monkeypatch)
    yield attempts
    assert attempts == [], f"network access attempted: {attempts}"
