"""A webhook for security events: each one POSTed as JSON, in order, retried with backoff.

Events wait in a bounded queue (MAX_QUEUE); past it, new events are dropped
and counted (`dropped`), so a receiver that is down never grows the server's
memory. One sender task posts them one at a time, in order: a failed post
(no answer, or not 2xx) is retried after a delay that doubles from
BACKOFF[0] to BACKOFF[1], and the events behind it wait. An authorization
secret, if any, is read from a file (never a flag) and sent as a bearer
credential.
"""

import asyncio
import json
import logging
import pathlib

import aiohttp

log = logging.getLogger(__name__)

MAX_QUEUE = 1000
BACKOFF = (0.5, 30.0)
TIMEOUT = 5.0


class Webhook:
    """POSTs events to `url`."""

    def __init__(self, url: str, token_file: str = "") -> None:
        self.url = url
        self._token = pathlib.Path(token_file).read_text().strip() if token_file else ""
        self._queue: asyncio.Queue = asyncio.Queue(MAX_QUEUE)
        self._task: asyncio.Task | None = None
        self.sent = 0
        self.dropped = 0

    def send(self, event: dict) -> None:
        """Queue `event` (never blocks; dropped and counted when the queue is full)."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recallcore-webhook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            while True:
                event = await self._queue.get()
                delay = BACKOFF[0]
                while not await self._post(session, event, headers):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF[1])
                self.sent += 1

    async def _post(self, session: aiohttp.ClientSession, event: dict, headers: dict) -> bool:
        try:
            async with session.post(self.url, data=json.dumps(event), headers=headers) as response:
                if 200 <= response.status < 300:
                    return True
                log.warning("webhook %s answered %d; retrying", self.url, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("webhook %s: %s; retrying", self.url, exc or type(exc).__name__)
        return False
