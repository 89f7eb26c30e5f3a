"""Self-test stand-ins that die the way a miscompiled native runtime does (used through
``EDGEKIT_SELFTEST_PROBES`` by tests/runtimes/test_selftest.py; they run only in the self-test's child)."""
import os
import signal


def illegal_instruction() -> None:
    os.kill(os.getpid(), signal.SIGILL)


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)
