"""The ledger domain. Its hot path may run compiled (``ledger.native``, ADR 0020): same sources, same behaviour."""

from ledger import native as _native

#: Whether this process runs the compiled modules, and why not when it does not.
NATIVE = _native.activate(__path__)
