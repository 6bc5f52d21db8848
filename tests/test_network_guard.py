"""Tests of tests/network_guard.py, the guard every no-network test uses."""

import socket

import pytest

from tests import network_guard


def test_local_addresses():
  assert network_guard.is_local_address(socket.AF_INET, ("127.0.0.1", 1))
  assert network_guard.is_local_address(socket.AF_INET, ("127.8.9.10", 1))
  assert network_guard.is_local_address(socket.AF_INET6, ("::1", 1, 0, 0))
  assert network_guard.is_local_address(socket.AF_UNIX, "/tmp/some.sock")
  assert not network_guard.is_local_address(socket.AF_INET, ("10.0.0.1", 1))
  assert not network_guard.is_local_address(socket.AF_INET6,
                                            ("2001:db8::1", 1, 0, 0))
  assert not network_guard.is_local_address(socket.AF_INET,
                                            ("github.com", 443))


def _connect_to_loopback():
  """Loopback still works (Beam's runner talks gRPC over it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with socket.create_connection(server.getsockname(), timeout=5):
      pass


def test_refuses_outside_connections_and_allows_loopback(monkeypatch):
  attempts = network_guard.guard_network(monkeypatch)
  with pytest.raises(ConnectionRefusedError):
    socket.create_connection(("192.0.2.1", 80), timeout=0.1)
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    with pytest.raises(ConnectionRefusedError):
      s.connect(("198.51.100.7", 443))
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    with pytest.raises(ConnectionRefusedError):
      s.connect_ex(("203.0.113.9", 443))
  assert [what for what, _ in attempts] == [
      "create_connection", "connect", "connect_ex"]
  _connect_to_loopback()
  assert len(attempts) == 3


def test_refuses_outside_name_lookups_when_asked(monkeypatch):
  attempts = network_guard.guard_network(monkeypatch, name_lookups=True)
  with pytest.raises(ConnectionRefusedError):
    socket.create_connection(("192.0.2.1", 443), timeout=0.1)
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    with pytest.raises(ConnectionRefusedError):
      s.connect(("198.51.100.7", 443))
  with pytest.raises(socket.gaierror):
    socket.getaddrinfo("dataflow.googleapis.com", 443)
  assert [what for what, _ in attempts] == [
      "create_connection", "connect", "getaddrinfo"]
  _connect_to_loopback()
  assert len(attempts) == 3
