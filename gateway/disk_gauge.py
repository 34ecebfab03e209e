"""The disk gauges, refreshed in the background: a scrape never walks the cache.

Measuring the download cache is a walk over every file in it: seconds on a
big Hugging Face cache.  One task, started with the application, walks it off
the event loop (``asyncio.to_thread``) every ``INTERVAL`` seconds, or less
often when a walk is slow (never more than a fifth of one core), and sets
``gateway_disk_used_bytes``; ``GET /metrics`` only reads the gauges.
"""

from __future__ import annotations

import asyncio
import logging
import time

from engine.downloads import Downloader
from gateway import metrics

log = logging.getLogger("gateway")

INTERVAL = 5.0  # seconds between walks, at least
DUTY = 5  # a walk that takes t seconds is followed by at least DUTY * t seconds of rest


async def refresh_disk_gauges(downloader: Downloader | None) -> None:
    """Keep the disk gauges current until cancelled (nothing to do without downloads)."""
    if downloader is None:
        return
    disk = downloader.disk
    metrics.disk_budget_bytes.set(disk.budget)
    while True:
        started = time.monotonic()
        try:
            metrics.disk_used_bytes.set(await asyncio.to_thread(disk.used))
        except OSError as exc:  # a file removed mid-walk, a permission: try again later
            log.warning("could not measure the download cache: %s", exc)
        seconds = time.monotonic() - started
        metrics.disk_scan_duration_seconds.observe(seconds)
        await asyncio.sleep(max(INTERVAL, DUTY * seconds))


def start_disk_gauges(downloader: Downloader | None) -> asyncio.Task[None]:
    """The refreshing task (cancel it at shutdown)."""
    return asyncio.get_running_loop().create_task(
        refresh_disk_gauges(downloader), name="disk-gauges"
    )
