"""
GSS-API (RFC 1961) with Kerberos from a throwaway realm (tests/helpers/kerberos.py:
a KDC on 127.0.0.1, the user's ticket, ``rcmd/localhost`` in a keytab).

- Handshake rate: our client (`txsocksgss.client.endpoints.SOCKS5ClientEndpoint`
  with `GSSAPIClientFactory`, level 2 requested) against the server, in
  ``processes`` spawned processes, each a Twisted reactor keeping its share
  of ``concurrency`` handshakes in flight: context establishment,
  protection-level subnegotiation, the protected CONNECT, a protected
  1-byte echo, the close (from the destination); per second over a fixed
  time.  Each process gets its service ticket before the clock starts, so
  the KDC is asked once per process.
- Throughput at level 1 (integrity) and level 2 (confidentiality): a
  blocking client (`GSSTunnel`, python-gssapi) that does the handshake,
  then uploads tokens it wrapped before the clock started (so its own
  wrapping costs nothing), and downloads without unwrapping (it walks the
  frame headers and counts plaintext as token length minus the fixed
  token overhead of the context's enctype, so its own unwrapping costs
  nothing and the count is exact).  The server's work is all that is timed.

Against our server, and against the GSS-API build of Dante
(tests/interop/build_dante_gssapi.sh) when it is installed: our client in
the root namespace drives Dante's *server* fine (only Dante's client
library needs a network namespace).
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import struct
import tempfile
import time
from typing import Any, Callable

from benchmarks.bulk import MB
from benchmarks.data import CHUNK, DataFile
from benchmarks.destination import UPLOAD_DONE, Destination, download_header, upload_header
from benchmarks.proxies import Proxy, start_dante, start_txsocksgss
from benchmarks.settings import Settings
from benchmarks.socks import LOOPBACK, connect_request, recv_exact, reply_length
from benchmarks.stats import median
from benchmarks.workers import run_together, shares

__all__ = ["GSSTunnel", "measure_gss_bulk", "measure_gss_rate", "measure_gss_server", "gssapi_method_args",
           "run_gss", "start_realm", "INTEGRITY", "CONFIDENTIALITY"]

SERVICE_HOST = "localhost"  # the realm has rcmd/localhost; krb5.conf does no canonicalisation
INTEGRITY = 1
CONFIDENTIALITY = 2
_FRAME = struct.Struct("!BBH")  # RFC 1961: version 1, message type, token length
_AUTHENTICATION, _PROTECTION, _ENCAPSULATION, _ABORT = 1, 2, 3, 0xFF
_MAX_TOKEN = 65535


class GSSTunnel:
    """
    A blocking SOCKS 5 CONNECT through a GSS-API proxy (RFC 1961): context
    establishment, the protection ``level`` (1 or 2), then the request and
    reply wrapped at that level.  ``sock`` and ``context`` stay usable.
    """

    def __init__(self, proxy_port: int, destination_port: int, level: int) -> None:
        import gssapi

        self.level = level
        self.conf = level == CONFIDENTIALITY
        self.sock = socket.create_connection((LOOPBACK, proxy_port), timeout=30)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(b"\x05\x01\x01")
            if recv_exact(self.sock, 2) != b"\x05\x01":
                raise ConnectionError("the proxy did not select GSS-API")
            flags = (gssapi.RequirementFlag.mutual_authentication | gssapi.RequirementFlag.replay_detection
                     | gssapi.RequirementFlag.out_of_sequence_detection | gssapi.RequirementFlag.integrity
                     | gssapi.RequirementFlag.confidentiality)
            self.context = gssapi.SecurityContext(
                name=gssapi.Name(f"rcmd@{SERVICE_HOST}", gssapi.NameType.hostbased_service),
                mech=gssapi.MechType.kerberos, flags=flags, usage="initiate")
            self._establish()
            self._send_frame(_PROTECTION, self.context.wrap(bytes([level]), False).message)
            agreed = self.context.unwrap(self._read_frame(_PROTECTION)).message
            if agreed != bytes([level]):
                raise ConnectionError(f"the proxy agreed to level {agreed.hex()}, not {level}")
            self.send(connect_request(LOOPBACK, destination_port))
            reply = self.receive()
            if len(reply) < 5 or len(reply) != reply_length(reply) or reply[1] != 0:
                raise ConnectionError(f"CONNECT refused: {reply.hex()}")
            self.sock.settimeout(None)
            self.chunk = self.context.get_wrap_size_limit(_MAX_TOKEN, self.conf)
            # AES (CTS) tokens carry a fixed overhead whatever their length (`prewrap` checks it; a
            # wrap here would use up a sequence number): the download count relies on it.
            self.overhead = _MAX_TOKEN - self.chunk
        except BaseException:
            self.sock.close()
            raise

    def _establish(self) -> None:
        token = self.context.step()
        while True:
            self._send_frame(_AUTHENTICATION, token)
            answer = self._read_frame(_AUTHENTICATION)
            if self.context.complete:  # the server's answer to our last token
                return
            token = self.context.step(answer)
            if self.context.complete and not token:
                return

    def _send_frame(self, kind: int, token: bytes) -> None:
        self.sock.sendall(_FRAME.pack(1, kind, len(token)) + token)

    def _read_frame(self, kind: int) -> bytes:
        version, received, length = _FRAME.unpack(recv_exact(self.sock, _FRAME.size))
        if received == _ABORT:
            raise ConnectionError("the proxy aborted the GSS-API subnegotiation")
        if version != 1 or received != kind:
            raise ConnectionError(f"expected GSS-API message type {kind}, got {version}/{received}")
        return recv_exact(self.sock, length)

    def frame(self, data: bytes) -> bytes:
        """``data`` wrapped as one MTYP 03 frame; frames must be sent in the order they were made."""
        token = self.context.wrap(data, self.conf).message
        return _FRAME.pack(1, _ENCAPSULATION, len(token)) + token

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.frame(data))

    def receive(self) -> bytes:
        return bytes(self.context.unwrap(self._read_frame(_ENCAPSULATION)).message)

    def prewrap(self, data: DataFile, size: int) -> list[bytes]:
        """``size`` bytes of ``data`` as ready-to-send MTYP 03 frames (in sequence for this context)."""
        frames = []
        view = memoryview(data.content)
        offset = 0
        remaining = size
        while remaining:
            count = min(self.chunk, remaining, data.size - offset)
            token = self.context.wrap(bytes(view[offset:offset + count]), self.conf).message
            if len(token) != count + self.overhead:
                raise ConnectionError("this enctype's wrap tokens have no fixed overhead")
            frames.append(_FRAME.pack(1, _ENCAPSULATION, len(token)) + token)
            remaining -= count
            offset = (offset + count) % data.size
        return frames

    def receive_counting(self, size: int, buffer: memoryview) -> None:
        """Receive MTYP 03 frames until they hold ``size`` plaintext bytes, without unwrapping them."""
        plaintext = skip = 0
        header = b""
        while plaintext < size or skip:
            got = self.sock.recv_into(buffer)
            if not got:
                break
            position = 0
            while position < got:
                if skip:
                    take = min(skip, got - position)
                    skip -= take
                    position += take
                    continue
                piece = bytes(buffer[position:position + _FRAME.size - len(header)])
                header += piece
                position += len(piece)
                if len(header) == _FRAME.size:
                    version, kind, skip = _FRAME.unpack(header)
                    header = b""
                    if version != 1 or kind != _ENCAPSULATION:
                        raise ConnectionError(f"unexpected GSS-API frame {version}/{kind} in the download")
                    plaintext += skip - self.overhead
        if plaintext != size:
            raise ConnectionError(f"the download carried {plaintext} plaintext bytes, not {size}")

    def close(self) -> None:
        self.sock.close()


class _Timed:
    """The wall-clock time and this process's CPU time of a ``with`` block."""

    def __enter__(self) -> "_Timed":
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu


def _upload(proxy_port: int, destination: Destination, data: DataFile, size: int, level: int) -> _Timed:
    tunnel = GSSTunnel(proxy_port, destination.bulk_port, level)
    try:
        header = tunnel.frame(upload_header(size))
        frames = tunnel.prewrap(data, size)  # before the clock: the mover's wrapping costs nothing
        tunnel.sock.sendall(header)
        with _Timed() as timed:
            for frame in frames:
                tunnel.sock.sendall(frame)
            if tunnel.receive() != UPLOAD_DONE:
                raise ConnectionError("the destination did not confirm the upload")
        return timed
    finally:
        tunnel.close()


def _download(proxy_port: int, destination: Destination, size: int, level: int, buffer: memoryview) -> _Timed:
    tunnel = GSSTunnel(proxy_port, destination.bulk_port, level)
    try:
        with _Timed() as timed:
            tunnel.send(download_header(size))
            tunnel.receive_counting(size, buffer)
        return timed
    finally:
        tunnel.close()


def measure_gss_bulk(proxy_port: int, destination: Destination, data: DataFile, runs: int, megabytes: int,
                     level: int) -> dict[str, object]:
    """
    Median MB/s (plaintext) of ``runs`` uploads and downloads at ``level``,
    and the busiest the data mover was while timed (CPU seconds per second).
    """
    size = megabytes * MB
    buffer = memoryview(bytearray(CHUNK))
    uploads = [_upload(proxy_port, destination, data, size, level) for _ in range(runs)]
    downloads = [_download(proxy_port, destination, size, level, buffer) for _ in range(runs)]
    name = "integrity" if level == INTEGRITY else "confidentiality"
    return {
        f"{name}_upload_mb_s": median([size / run.wall / MB for run in uploads]),
        f"{name}_download_mb_s": median([size / run.wall / MB for run in downloads]),
        f"{name}_upload_runs_mb_s": [size / run.wall / MB for run in uploads],
        f"{name}_download_runs_mb_s": [size / run.wall / MB for run in downloads],
        f"{name}_mover_cpu_cores": max(run.cpu / run.wall for run in uploads + downloads),
    }


# -- handshake rate: our Twisted client in spawned processes -------------------


def measure_gss_rate(proxy_port: int, echo_port: int, concurrency: int, processes: int,
                     seconds: float) -> dict[str, object]:
    """GSS-API handshakes (+ protected 1-byte echo) per second, and the clients' CPU use in cores."""
    # spawn, not fork: each worker needs a reactor of its own.
    reports = run_together("spawn", _run_rate, [(proxy_port, echo_port, share, seconds)
                                                for share in shares(concurrency, processes)], seconds)
    return {
        "handshake_rate_per_s": sum(report["completed"] for report in reports) / seconds,
        "handshakes": sum(report["completed"] for report in reports),
        "handshake_errors": sum(report["errors"] for report in reports),
        "handshake_error_examples": sorted({e for report in reports for e in report["error_examples"]})[:5],
        "client_cpu_cores": sum(report["cpu"] for report in reports) / seconds,
    }


def _run_rate(proxy_port: int, echo_port: int, concurrency: int, seconds: float,
              ready: Callable[[], None]) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory, Protocol

    from txsocksgss.auth.gssapi import GSSAPIClientFactory
    from txsocksgss.client.endpoints import SOCKS5ClientEndpoint

    class EchoOnce(Protocol):
        def __init__(self) -> None:
            self.done: Deferred[bool] = Deferred()
            self.echoed = False

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(b"x")

        def dataReceived(self, data: bytes) -> None:
            self.echoed = data == b"x"  # then the destination closes, and the proxy passes that on

        def connectionLost(self, reason: Any = None) -> None:
            self.done.callback(self.echoed)

    endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, LOOPBACK, proxy_port), LOOPBACK, echo_port,
                                    methods=[GSSAPIClientFactory(host=SERVICE_HOST)])
    state: dict[str, Any] = {"completed": 0, "errors": 0, "error_examples": set(), "deadline": None,
                             "failure": None}

    def handshake() -> Deferred[Any]:
        """Fires with whether the echo came back, once the connection is closed."""
        def connected(protocol: Any) -> Deferred[bool]:
            return protocol.done  # type: ignore[no-any-return]

        connecting: Deferred[Any] = endpoint.connect(Factory.forProtocol(EchoOnce))
        return connecting.addCallback(connected)

    def loop() -> None:
        if time.monotonic() >= state["deadline"]:
            return
        handshake().addCallbacks(finished, failed).addBoth(lambda _: reactor.callLater(0, loop))

    def finished(echoed: bool) -> None:
        if time.monotonic() >= state["deadline"]:
            return
        if echoed:
            state["completed"] += 1
        else:
            state["errors"] += 1
            state["error_examples"].add("the echo did not come back")

    def failed(failure: Any) -> None:
        if time.monotonic() >= state["deadline"]:
            return  # cut short by the end of the run
        state["errors"] += 1
        state["error_examples"].add(failure.getErrorMessage()[:200])

    def start(echoed: bool) -> None:
        if not echoed:
            raise ConnectionError("the warm-up handshake's echo did not come back")
        ready()  # blocks the reactor until every process is ready: nothing else is going on
        state["cpu"] = _cpu()
        state["deadline"] = time.monotonic() + seconds
        for _ in range(concurrency):
            loop()
        reactor.callLater(seconds, stop)

    def stop() -> None:
        state["cpu"] = _cpu() - state["cpu"]
        reactor.stop()

    def warm_up_failed(failure: Any) -> None:
        state["failure"] = f"warm-up handshake: {failure.getErrorMessage()}"
        reactor.stop()

    # The warm-up gets this process its service ticket before the clock starts.
    reactor.callWhenRunning(lambda: handshake().addCallback(start).addErrback(warm_up_failed))
    reactor.run()
    if state["failure"]:
        raise ConnectionError(state["failure"])
    return {"completed": state["completed"], "errors": state["errors"],
            "error_examples": sorted(state["error_examples"]), "cpu": state["cpu"]}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


# -- the servers ------------------------------------------------------------------


def measure_gss_server(proxy: Proxy, destination: Destination, data: DataFile, settings: Settings,
                       say: Callable[[str], None]) -> dict[str, object]:
    """The handshake rate, then bulk at levels 1 and 2, of the GSS-API ``proxy``."""
    result: dict[str, object] = {}
    say(f"{proxy.name}: GSS-API handshakes ({settings.gss_rate_concurrency} at a time, "
        f"{settings.gss_rate_seconds:g} s)")
    result.update(measure_gss_rate(proxy.port, destination.echo_port, settings.gss_rate_concurrency,
                                   settings.gss_rate_processes, settings.gss_rate_seconds))
    for level in (INTEGRITY, CONFIDENTIALITY):
        say(f"{proxy.name}: GSS-API level {level} bulk ({settings.gss_runs} x {settings.gss_mb} MB each way)")
        result.update(measure_gss_bulk(proxy.port, destination, data, settings.gss_runs, settings.gss_mb, level))
    return result


def _dante_environment() -> tuple[dict[str, str], str]:
    """
    sockd's environment: its negotiate children run as nobody, which must
    read krb5.conf (a world-readable copy) and use the library's default
    replay cache (the realm's directory is root-only).  The keytab may stay
    root-only: sockd reads it as root.
    """
    public = tempfile.mkdtemp(prefix="txsocksgss-bench-krb5-")
    os.chmod(public, 0o755)
    environ = {k: v for k, v in os.environ.items()
               if k not in ("LD_PRELOAD", "KRB5RCACHEDIR", "KRB5_KTNAME", "KRB5_CLIENT_KTNAME")}
    krb5_conf = os.path.join(public, "krb5.conf")
    shutil.copyfile(os.environ["KRB5_CONFIG"], krb5_conf)
    os.chmod(krb5_conf, 0o644)
    environ["KRB5_CONFIG"] = krb5_conf
    return environ, public


def start_realm() -> Any:
    """
    The Kerberos realm of this process (tests/helpers/kerberos.py), started on the
    first call; it points this process's environment, and so the proxies',
    at itself.
    """
    from tests.helpers.kerberos import test_realm

    return test_realm()


def gssapi_method_args(keytab: str) -> list[str]:
    """txsocksgss's method arguments for the GSS-API measurements: both levels, the realm's ``keytab``."""
    return ["--method", "gssapi", "--gssapi-keytab", keytab, "--gssapi-protection", "confidentiality,integrity"]


def run_gss(settings: Settings, destination: Destination, data: DataFile, workdir: str,
            say: Callable[[str], None]) -> dict[str, object]:
    """
    Every GSS-API measurement against txsocksgss, then against Dante's
    GSS-API build if installed; ``dante-gssapi`` is None and
    ``dante_gssapi_skipped`` says why when it is not.
    """
    keytab = start_realm().service_keytab
    results: dict[str, object] = {"dante-gssapi": None, "dante_gssapi_skipped": None}
    with start_txsocksgss(workdir, settings.proxy_args, gssapi_method_args(keytab), name="txsocksgss-gssapi") as proxy:
        results["txsocksgss"] = measure_gss_server(proxy, destination, data, settings, say)

    try:
        from tests.interop.dante import dante_gssapi_build

        build = dante_gssapi_build()
    except AssertionError as missing:
        results["dante_gssapi_skipped"] = str(missing)
        say(f"GSS-API: Dante skipped: {missing}")
        return results
    environ, public = _dante_environment()
    try:
        with start_dante(workdir, build.sockd, method="gssapi", keytab=keytab, env=environ,
                         name="dante-gssapi") as proxy:
            results["dante-gssapi"] = measure_gss_server(proxy, destination, data, settings, say)
    finally:
        shutil.rmtree(public, ignore_errors=True)
    return results
