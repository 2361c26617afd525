"""Helpers for the kit's own tests (not tests): is a process running, wait for a condition."""

from __future__ import annotations

import time

import psutil


def running(pid: int) -> bool:
    """A process that exists and has not exited (a zombie waiting for its reaper has exited)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(condition, timeout: float, interval: float = 0.02):
    """Poll `condition` until it returns something truthy or `timeout` s pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return condition()
