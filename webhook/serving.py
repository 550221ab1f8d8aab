"""Runs the HTTPS server for `serve` (being built: see issue 3)."""

from __future__ import annotations

from webhook.settings import Settings


def run(settings: Settings) -> int:
    """Serve until SIGTERM; the exit code."""
    del settings
    raise SystemExit("error: `serve` is not available yet")
