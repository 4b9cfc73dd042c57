"""
Shared test helpers, one module per concept; test modules import from here
and never from one another.

``certificates``  a throwaway TLS key and self-signed certificate
``clients``       clients on real sockets: Fetcher, ScriptedClient, StreamCollector,
                  DatagramCollector, Tunnel/openTunnel, HostileClient
``codecs``        the properties every sans-IO codec test checks, and the fuzzing strategies
``docs``          the manual's code blocks and its marked Python examples
``fakes``         resolvers, a half-closeable StringTransport, a reactor with fake UDP ports
``harness``       the server protocol on fakes (ServerHarness), request bytes, a UDP association
``identd``        a real RFC 1413 identd in its own process (startIdentd)
``integration``   IntegrationTestCase: servers and clients on 127.0.0.1, torn down cleanly
``kerberos``      a throwaway MIT Kerberos realm (test_realm)
``logs``          the log events of a test as text (capture_logs, lines_with)
``maf``           authentication conversations driven against each other (converse)
``ports``         free ports, the test KDC's port range, a port that never answers
``processes``     external programs: require_program, run_program, WatchedProcess, spawnTwistd
``servers``       destination servers: echo (TCP, UDP), HTTP bytes, banner
``session_io``    the session machine on fakes: a recording ISessionIO, connectors, tunnels,
                  commands, a scripted method, a protection, an ident checker (machine_on_fakes)
``stress``        resource accounting, seeded pumps, bounded waits for the soak and hostile tests
"""
