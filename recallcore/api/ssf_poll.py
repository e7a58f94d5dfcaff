"""Polling a transmitter for Security Event Tokens (RFC 8936), one background task per stream.

Theory of operation. Each poll is a POST of `{"ack": [...], "setErrs":
{...}, "maxEvents": N, "returnImmediately": true}` to the transmitter's poll
URL; the answer's `sets` (jti -> SET) are handed one by one, in the order
given, to the receiver, which returns only once each is durably applied.
Only then is a jti put on the list acknowledged with the next poll; a SET
refused as not good goes into `setErrs` with its RFC 8936 error code (the
transmitter need not send it again); a SET the node cannot apply now is
neither, so the transmitter delivers it again, and the poller backs off.
The lists are cleared only once a poll carrying them was answered 200: an
acknowledgement lost on the way is sent again (a SET delivered twice
changes nothing).

After a SET batch, or when the transmitter says moreAvailable, the next poll
goes at once; after an empty one, in `ssf_poll_interval`. A poll that fails
(the transmitter down, an error status, an answer that does not parse) is
retried after a wait that doubles from interval/5 up to `ssf_poll_backoff`,
jittered; the first good poll resets it.
"""

import asyncio
import json
import logging
import pathlib
import random
import ssl
import time

import aiohttp

from ..core.errors import RecallError
from ..security.set_verifier import SetRejected
from ..settings import Settings
from .signals import Receiver, Stream

log = logging.getLogger(__name__)

MAX_EVENTS = 100  # SETs asked for in one poll
POLL_TIMEOUT = 30.0  # seconds for one poll
MAX_ANSWER = 4 << 20  # bytes of a poll answer


class PollError(Exception):
    """The transmitter's answer was not a poll answer."""


def backoff(failures: int, interval: float, ceiling: float) -> float:
    """Seconds to wait after `failures` failed polls in a row: doubling, at most `ceiling`, jittered."""
    return min(ceiling, interval / 5 * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)


class Background:
    """A task of its own speaking https to one peer (the poller here, the pusher of ssf_transmit)."""

    def __init__(self, name: str, cacert: str) -> None:
        self.name, self.cacert = name, cacert
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client session (made on first use, inside the loop), trusting `cacert` or the system's CAs."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=self.cacert or None)),
                timeout=aiohttp.ClientTimeout(total=POLL_TIMEOUT))
        return self._session

    async def _run(self) -> None:
        raise NotImplementedError


class Poller(Background):
    """Polls `stream`'s transmitter and applies what it delivers through `receiver`."""

    def __init__(self, receiver: Receiver, stream: Stream, settings: Settings) -> None:
        super().__init__(f"recallcore-ssf-poll-{stream.name}", stream.transmitter.cacert or settings.jwks_cacert)
        self.receiver, self.stream, self.settings = receiver, stream, settings
        self.url = stream.transmitter.poll
        self.peer = "poll:" + self.url
        self.acks: list[str] = []
        self.errors: dict[str, dict] = {}
        self.failures = 0
        stream.poll_state.update(url=self.url, polls=0, failures=0, last_error="", last_success=0)

    async def _run(self) -> None:
        interval, ceiling = self.settings.ssf_poll_interval, self.settings.ssf_poll_backoff
        while True:
            try:
                sets, more = await self._poll()
            except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError, PollError) as exc:
                await self._failed(f"poll {self.url}: {exc}", interval, ceiling)
                continue
            self.failures = 0
            self.stream.poll_state.update(failures=0, last_success=int(time.time()))
            try:
                for jti, token in sets.items():
                    await self._apply(jti, token)
            except RecallError as exc:  # not applied: left unacknowledged, delivered again
                await self._failed(f"cannot apply SETs now: {exc}", interval, ceiling)
                continue
            if not sets and not more:
                await asyncio.sleep(interval)

    async def _apply(self, jti: str, token: str) -> None:
        try:
            await self.receiver.receive(self.stream, token, self.peer)
        except SetRejected as exc:
            log.warning("ssf %s: SET %s refused: %s: %s", self.stream.name, jti, exc.err, exc)
            self.errors[jti] = {"err": exc.err, "description": str(exc)}
            return
        self.acks.append(jti)

    async def _failed(self, why: str, interval: float, ceiling: float) -> None:
        self.failures += 1
        wait = backoff(self.failures, interval, ceiling)
        self.stream.poll_state.update(failures=self.failures, last_error=why)
        (log.warning if self.failures == 1 else log.debug)("ssf %s: %s; again in %.1f s", self.stream.name, why, wait)
        await asyncio.sleep(wait)

    def _headers(self) -> dict:
        headers = {"Accept": "application/json"}
        path = self.stream.transmitter.poll_token_file
        if path:  # read at each poll: a rotated secret is used at once
            headers["Authorization"] = "Bearer " + pathlib.Path(path).read_text().strip()
        return headers

    async def _poll(self) -> tuple[dict[str, str], bool]:
        """Send the acknowledgements, get the next SETs: (jti -> SET, moreAvailable)."""
        body = {"ack": list(self.acks), "maxEvents": MAX_EVENTS, "returnImmediately": True}
        if self.errors:
            body["setErrs"] = dict(self.errors)
        self.stream.poll_state["polls"] += 1
        async with self.session.post(self.url, json=body, headers=self._headers()) as response:
            if response.status != 200:
                raise PollError(f"HTTP {response.status}")
            raw = await response.content.read(MAX_ANSWER + 1)
        if len(raw) > MAX_ANSWER:
            raise PollError(f"an answer larger than {MAX_ANSWER} bytes")
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise PollError(f"the answer is not JSON: {exc}") from None
        sets = answer.get("sets") if isinstance(answer, dict) else None
        if not isinstance(sets, dict) or not all(isinstance(v, str) for v in sets.values()):
            raise PollError("the answer has no sets object of jti -> SET")
        # The transmitter heard these: a SET acknowledged is not sent again.
        self.acks, self.errors = [], {}
        return sets, bool(answer.get("moreAvailable"))
