"""The node's DNS publishing task: the SRV record published at start, refreshed, removed at stop.

The update itself is `kmsgate.dns.update`; this is only its lifecycle in the serving process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kmsgate.config.settings import ServeSettings
from kmsgate.dns import update
from kmsgate.dns.update import DEFAULT_TIMEOUT, DnsPublishError

__all__ = ["DnsPublisher"]

log = logging.getLogger("kmsgate.server.dns")


class DnsPublisher:
    """Keeps this host's SRV record published: now, then every ``interval`` seconds."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        interval: float | None = None,
        retry_delay: float = 10.0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.interval = float(settings.dns_interval if interval is None else interval)
        self.retry_delay = min(retry_delay, self.interval)
        self.timeout = timeout
        self.published = 0  # successful updates so far
        self.failures = 0  # failed attempts so far
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether the refresh task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start publishing in the background; the first update is sent at once."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="kmsgate-dns-publish")

    async def _run(self) -> None:
        delay = self.retry_delay
        while not self._stopping.is_set():
            error = await self._publish_once()
            if error is None:
                delay, pause = self.retry_delay, self.interval
            else:
                self.failures += 1
                self.last_error = error
                log.warning("cannot publish the DNS SRV record: %s; retrying in %g s", error, delay)
                delay, pause = min(delay * 2, self.interval), delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)

    async def _publish_once(self) -> str | None:
        """One publish; returns why it failed, or None."""
        try:
            result = await update.publish(self.settings, timeout=self.timeout)
        except DnsPublishError as exc:
            return str(exc)
        except Exception as exc:  # publishing must never bring the host down
            log.exception("unexpected error publishing the DNS SRV record")
            return f"{type(exc).__name__}: {exc}"
        self.published += 1
        self.last_error = None
        level = logging.INFO if self.published == 1 or result.removed else logging.DEBUG
        log.log(
            level,
            "published %s via %s:%d (zone %s)%s",
            result.record.to_text(),
            *result.server,
            result.zone,
            f", replacing {', '.join(result.removed)}" if result.removed else "",
        )
        return None

    async def stop(self, unpublish: bool = True) -> None:
        """Stop refreshing; with ``unpublish`` delete this host's record (failures only logged)."""
        task, self._task = self._task, None
        if task is None:
            return
        # Let an update in flight finish (bounded by the timeout): cancelling it could leave
        # it applied by the server after our removal.
        self._stopping.set()
        try:
            await asyncio.wait_for(task, self.timeout + 1)
        except TimeoutError:
            log.warning("the DNS update in flight did not finish; cancelled it")
        except Exception:  # _run catches everything itself; this is belt and braces
            log.exception("the DNS publisher failed")
        if not unpublish:
            return
        try:
            result = await update.unpublish(self.settings, timeout=self.timeout)
        except DnsPublishError as exc:
            log.warning("cannot remove the DNS SRV record: %s", exc)
        except Exception:  # shutdown must go on
            log.exception("unexpected error removing the DNS SRV record")
        else:
            log.info("removed %s from DNS via %s:%d", result.record.owner, *result.server)
