"""
The SOCKS 5 client side every measurement shares: the bytes of a
no-authentication CONNECT (RFC 1928) and of a username/password
subnegotiation (RFC 1929), written out by hand so that the harness does
not depend on the code it measures, and a blocking tunnel.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["GREETING", "METHOD_NONE", "GREETING_USERPASS", "METHOD_USERPASS", "USERPASS_SUCCESS",
           "userpass_request", "connect_request", "reply_length", "recv_exact", "open_tunnel",
           "echo_and_close", "LOOPBACK"]

LOOPBACK = "127.0.0.1"
GREETING = b"\x05\x01\x00"  # version 5, one method: 0x00 no authentication
METHOD_NONE = b"\x05\x00"
GREETING_USERPASS = b"\x05\x01\x02"  # one method: 0x02 username/password
METHOD_USERPASS = b"\x05\x02"
USERPASS_SUCCESS = b"\x01\x00"  # RFC 1929 s2: subnegotiation version 1, status 0
_REPLY_HEAD = 5  # VER REP RSV ATYP and the first address octet (a name's length)


def connect_request(host: str, port: int) -> bytes:
    """CONNECT to an IPv4 address (RFC 1928 s4)."""
    return b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port)


def userpass_request(user: bytes, password: bytes) -> bytes:
    """The username/password request (RFC 1929 s2: VER ULEN UNAME PLEN PASSWD)."""
    return bytes([1, len(user)]) + user + bytes([len(password)]) + password


def reply_length(head: bytes) -> int:
    """The whole length of a reply (RFC 1928 s6) from its first five octets."""
    atyp = head[3]
    if atyp == 1:
        return 10
    if atyp == 4:
        return 22
    if atyp == 3:
        return 7 + head[4]
    raise ValueError(f"reply with address type {atyp}")


def recv_exact(sock: socket.socket, count: int) -> bytes:
    """Exactly ``count`` bytes; ConnectionError on an early end of stream."""
    data = b""
    while len(data) < count:
        more = sock.recv(count - len(data))
        if not more:
            raise ConnectionError(f"end of stream after {len(data)} of {count} bytes")
        data += more
    return data


def _check_reply(sock: socket.socket) -> None:
    head = recv_exact(sock, _REPLY_HEAD)
    recv_exact(sock, reply_length(head) - _REPLY_HEAD)
    if head[0] != 5 or head[1] != 0:
        raise ConnectionError(f"CONNECT refused: reply {head[:2].hex()}")


def open_tunnel(proxy_port: int | None, destination_port: int, timeout: float = 30.0) -> socket.socket:
    """
    A connected blocking socket to 127.0.0.1:``destination_port``, through
    the SOCKS 5 proxy at 127.0.0.1:``proxy_port`` (method none), or direct
    when ``proxy_port`` is None.  Each step waits for its answer, as a
    client that does not pipeline must.
    """
    port = destination_port if proxy_port is None else proxy_port
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if proxy_port is not None:
            sock.sendall(GREETING)
            if recv_exact(sock, 2) != METHOD_NONE:
                raise ConnectionError("the proxy did not select method none")
            sock.sendall(connect_request(LOOPBACK, destination_port))
            _check_reply(sock)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def echo_and_close(sock: socket.socket) -> None:
    """
    Send one byte to the echo port, check it comes back, wait for the
    end of stream (the destination closes first) and close.
    """
    with sock:
        sock.sendall(b"x")
        if recv_exact(sock, 1) != b"x":
            raise ConnectionError("the echo came back wrong")
        if sock.recv(1):
            raise ConnectionError("more than the echo came back")
