"""
Compatibility only: the shared helpers live in `tests.helpers`.  These names
stay importable from here for test modules that still use this path.
"""

from tests.helpers.clients import StreamCollector
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.processes import require_program, run_program
from tests.helpers.servers import ByteServerFactory, EchoUDP

__all__ = ["ByteServerFactory", "EchoUDP", "IntegrationTestCase", "StreamCollector", "require_program", "run_program"]
