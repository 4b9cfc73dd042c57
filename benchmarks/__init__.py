"""
The benchmark harness: ``python -m benchmarks`` (``make bench``).

It starts a loopback destination (`benchmarks.destination`), then each
proxy in turn (`benchmarks.proxies`: txsocksgss under ``twistd -n
socksgss``, Debian's ``danted`` and ``microsocks``, all with authentication
method "none" on 127.0.0.1), and measures through each the same things with
the same client code: bulk throughput (`benchmarks.bulk`), connection rate
(`benchmarks.connrate`), handshake latency (`benchmarks.latency`) and
memory per idle tunnel (`benchmarks.idle`); then GSS-API on its own
(`benchmarks.gss`).  "direct" runs the same clients without a proxy, as
the ceiling of the clients themselves.  `benchmarks.report` prints the
table and writes the JSON.  docs/performance.rst describes the method.
"""
