"""A test guard that refuses, and records, network use outside this machine.

Loopback and Unix sockets stay allowed: Beam's local runner talks gRPC over
them. `guard_network(monkeypatch)` returns the list the refused attempts are
appended to, as (what, address) pairs, so a test can assert it stays empty.
"""

import ipaddress
import socket


def is_local_host(host) -> bool:
  """Whether a host name or address stays on this machine."""
  if isinstance(host, bytes):
    host = host.decode()
  if host in (None, "", "localhost"):
    return True
  try:
    ip = ipaddress.ip_address(str(host).split("%")[0])
  except ValueError:
    return False  # a name: looking it up already leaves the machine
  if ip.version == 6 and ip.ipv4_mapped is not None:
    ip = ip.ipv4_mapped
  return ip.is_loopback  # 127.0.0.0/8 or ::1


def is_local_address(family, address) -> bool:
  """Whether a connect() address stays on this machine."""
  if family == getattr(socket, "AF_UNIX", object()) or isinstance(
      address, (str, bytes)):
    return True  # a Unix socket
  return is_local_host(address[0])


def guard_network(monkeypatch, name_lookups: bool = False) -> list:
  """Refuses outside connections (and, if asked, outside name lookups)."""
  attempts = []
  original_connect = socket.socket.connect
  original_connect_ex = socket.socket.connect_ex
  original_create_connection = socket.create_connection
  original_getaddrinfo = socket.getaddrinfo

  def refuse(what, address):
    attempts.append((what, address))
    raise ConnectionRefusedError(f"test guard: no network ({what} {address!r})")

  def connect(self, address):
    if not is_local_address(self.family, address):
      refuse("connect", address)
    return original_connect(self, address)

  def connect_ex(self, address):
    if not is_local_address(self.family, address):
      refuse("connect_ex", address)
    return original_connect_ex(self, address)

  def create_connection(address, *args, **kwargs):
    if not is_local_host(address[0]):
      refuse("create_connection", address)
    return original_create_connection(address, *args, **kwargs)

  def getaddrinfo(host, *args, **kwargs):
    if not is_local_host(host):
      attempts.append(("getaddrinfo", host))
      raise socket.gaierror(f"test guard: no name lookups ({host!r})")
    return original_getaddrinfo(host, *args, **kwargs)

  monkeypatch.setattr(socket.socket, "connect", connect)
  monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
  monkeypatch.setattr(socket, "create_connection", create_connection)
  if name_lookups:
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
  return attempts
