"""
Compatibility only: the shared helpers live in `tests.helpers`.  These names
stay importable from here for test modules that still use this path.
"""

from tests.helpers.clients import openTunnel
from tests.helpers.processes import spawnTwistd
from tests.helpers.servers import EchoFactory

__all__ = ["EchoFactory", "openTunnel", "spawnTwistd"]
