"""
Bulk throughput through one CONNECT tunnel, each direction.

Each run opens a tunnel to the destination's bulk port and moves
``megabytes`` (10^6 bytes) one way; the clock runs from the header to the
last byte: for an upload until the destination confirms it received
everything, for a download until the client has received everything.  The
sender (client or destination) uses os.sendfile from the data file; the
receiver splices what arrives to /dev/null (`benchmarks.data.Discard`), so
each byte is copied once, into the socket.  The median of the runs counts;
every run is kept in the JSON.
"""

from __future__ import annotations

import time

from benchmarks.data import DataFile, Discard, send_from_file
from benchmarks.destination import UPLOAD_DONE, Destination, download_header, upload_header
from benchmarks.processes import tree_cpu_seconds
from benchmarks.socks import open_tunnel, recv_exact
from benchmarks.stats import median

__all__ = ["measure_bulk"]

MB = 1_000_000


def measure_bulk(proxy_port: int | None, destination: Destination, data: DataFile, runs: int, megabytes: int,
                 proxy_pid: int | None = None) -> dict[str, object]:
    """
    Upload then download ``runs`` times each; MB/s medians and runs, and
    (with ``proxy_pid``) the proxy's CPU seconds per GB moved.
    """
    size = megabytes * MB
    cpu_before = tree_cpu_seconds(proxy_pid) if proxy_pid else 0.0
    uploads = [_upload(proxy_port, destination, data, size) for _ in range(runs)]
    with Discard() as discard:
        downloads = [_download(proxy_port, destination, size, discard) for _ in range(runs)]
    result: dict[str, object] = {
        "bulk_upload_mb_s": median(uploads),
        "bulk_download_mb_s": median(downloads),
        "bulk_upload_runs_mb_s": uploads,
        "bulk_download_runs_mb_s": downloads,
    }
    if proxy_pid:
        moved_gb = 2 * runs * size / 1e9
        result["bulk_proxy_cpu_s_per_gb"] = (tree_cpu_seconds(proxy_pid) - cpu_before) / moved_gb
    return result


def _upload(proxy_port: int | None, destination: Destination, data: DataFile, size: int) -> float:
    with open_tunnel(proxy_port, destination.bulk_port) as sock:
        sock.sendall(upload_header(size))
        start = time.perf_counter()
        send_from_file(sock, data, size)
        if recv_exact(sock, 1) != UPLOAD_DONE:
            raise ConnectionError("the destination did not confirm the upload")
        return size / (time.perf_counter() - start) / MB


def _download(proxy_port: int | None, destination: Destination, size: int, discard: Discard) -> float:
    with open_tunnel(proxy_port, destination.bulk_port) as sock:
        start = time.perf_counter()
        sock.sendall(download_header(size))
        discard.receive(sock, size)
        return size / (time.perf_counter() - start) / MB
