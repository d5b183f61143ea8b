"""Stopping a child process we started (the local broker, a benchmarked instance)."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM, wait up to `timeout` seconds for a clean exit, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
