"""The first output of every notebook: which code, on which machine, under what load it ran.

A stored notebook is evidence only if a reader can tell what produced it. The line names edgekit's
version and the revision of what produces the figures (the last commit that changed the library, its data
or its pinned dependencies: a commit of tests, docs or the notebooks themselves changes no output), whether
those files were unchanged in the working tree, the CPU and its cores, the 1-minute load average when the
notebook started, and the time. ``tests/test_stored_notebooks.py`` reads it back from every stored
notebook: one revision across them all, a clean tree, a load no higher than 1.5 per core.
"""
from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from IPython.display import Markdown

from edgekit.core import __version__
from edgekit.core.cpu_features import cpu_model

PATTERN = re.compile(r"revision `(?P<revision>[0-9a-f]+|unknown)` \((?P<tree>clean|dirty) tree\).*"
                     r"load (?P<load>[0-9.]+) on (?P<cores>\d+) cores")


CODE_PATHS = ("edgekit", "data", "pyproject.toml")  # what the figures depend on, relative to the checkout


def code_revision(root: Path | None = None) -> tuple[str, bool]:
    """The short git revision of the last commit that changed :data:`CODE_PATHS` and whether they are unchanged
    in the working tree; ("unknown", False) outside a git checkout."""
    root = root or Path(__file__).resolve().parent.parent.parent
    try:
        rev = subprocess.run(["git", "log", "-1", "--format=%h", "--", *CODE_PATHS], capture_output=True,
                             text=True, timeout=5, cwd=root)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
                                 capture_output=True, text=True, timeout=5, cwd=root).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    revision = rev.stdout.strip()
    return (revision, not changed) if rev.returncode == 0 and revision else ("unknown", False)


def run_record() -> Markdown:
    """One line: ``edgekit 0.9 at revision `abc1234` (clean tree), AMD EPYC, load 0.42 on 2 cores, started ...``."""
    revision, clean = code_revision()
    load = os.getloadavg()[0]
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Markdown(f"*Run record:* edgekit {__version__} at revision `{revision}` "
                    f"({'clean' if clean else 'dirty'} tree), {cpu_model()}, load {load:.2f} on {os.cpu_count()} "
                    f"cores, started {started}.")
