"""Run a bundle through ``python -m monai.bundle run`` in a subprocess, as a user does (the bundle tests and the
CUDA tests share this)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bundle_command(args: Sequence[str], options: Sequence[str], launcher: Sequence[str] | None = None) -> list[str]:
    """``<launcher> -m monai.bundle run <args> <options>``; the launcher defaults to this Python."""
    return [*(launcher or [sys.executable]), "-m", "monai.bundle", "run", *args, *options]


def run_bundle(
    args: Sequence[str],
    options: Sequence[str],
    launcher: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> str:
    """Run the bundle command from the repository root with ``env`` added to the environment; assert it succeeds
    (showing the end of its output otherwise) and return its output."""
    result = subprocess.run(
        bundle_command(args, options, launcher),
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr
