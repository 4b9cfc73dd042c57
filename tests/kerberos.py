"""
Compatibility only: the test realm lives in `tests.helpers.kerberos`.  These
names stay importable from here for test modules that still use this path.
"""

from tests.helpers.kerberos import SERVICE_HOST, test_realm

__all__ = ["SERVICE_HOST", "test_realm"]
