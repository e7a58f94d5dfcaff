"""How fresh a node's vouch is, judged by the sender's clock: no I/O, no clock of its own.

Theory of operation. A Watch event whose head_seq equals the receiver's seq
vouches that the receiver is current as of the event's `vouched_at_us` (the
sender's clock). `Freshness.vouch` turns that into a moment of the
receiver's monotonic clock: `now_mono - age`, where age is how long ago the
sender vouched (`now_wall - sent_at`). So a vouch that sat in a socket
buffer while this process was paused counts from when it was made, not from
when it was read: a delay cannot manufacture freshness. A vouch is ignored
when it carries no time, when it arrives older than the sender's heartbeat
interval plus `max_skew` (it says nothing a fresher one will not), and when
it is stamped more than `max_skew` in the receiver's future (the sender's
clock is ahead: trusting it would hide a stall as long as the difference).
The last two are reported (`ignored`, `reason`) so an operator can see a
clock that is off. Vouches only move forward: an older one never replaces a
newer one.

Replicas and the server's followers drive this same class; `vouched_wall`
is the sender's own timestamp of the last vouch, which a follower passes on
to its subscribers unchanged.
"""

import dataclasses
import math

DEFAULT_MAX_SKEW = 0.5  # seconds two hosts' clocks may differ (NTP keeps them within milliseconds)


@dataclasses.dataclass
class Freshness:
    """The last vouch that counted, in both clocks; see the module docstring."""

    max_skew: float = DEFAULT_MAX_SKEW
    vouched_mono: float = -math.inf  # receiver's monotonic clock
    vouched_wall: float = 0.0  # the sender's clock (Unix seconds); 0 = never
    ignored: int = 0  # vouches not counted: late or from a clock too far ahead
    reason: str = ""  # why the last one was not counted

    def __post_init__(self) -> None:
        if not self.max_skew >= 0:
            raise ValueError("max_skew: must not be negative")

    def vouch(self, sent_at: float, interval: float, now_wall: float, now_mono: float) -> bool:
        """Count a vouch the sender stamped `sent_at` (Unix seconds, its clock).

        `interval`: the sender's heartbeat interval. Returns True when it
        counts (and moves the vouch forward), False when it is ignored; then
        `reason` says why (empty for an event that carries no time).
        """
        if sent_at <= 0:
            self.reason = ""
            return False
        age = now_wall - sent_at
        if age < -self.max_skew:
            return self._ignore(f"stamped {-age:.3f} s in this host's future: the sender's clock is ahead "
                                f"by more than the allowed skew of {self.max_skew} s")
        if age > interval + self.max_skew:
            return self._ignore(f"arrived {age:.3f} s after it was made, more than the heartbeat interval "
                                f"({interval} s) plus the allowed skew ({self.max_skew} s): late, or the "
                                f"sender's clock is behind")
        at = now_mono - max(age, 0.0)
        if at > self.vouched_mono:
            self.vouched_mono, self.vouched_wall = at, sent_at
        return True

    def restore(self, vouched_wall: float, now_wall: float, now_mono: float) -> None:
        """Start from a vouch saved earlier (a warm start): as stale as it is old.

        A saved time in the future (a clock that went back) is unknown: stays stale.
        """
        age = now_wall - vouched_wall
        if vouched_wall > 0 and age >= 0:
            self.vouched_mono, self.vouched_wall = now_mono - age, vouched_wall

    def staleness(self, now_mono: float) -> float:
        """Seconds since the last vouch that counted (inf: none yet)."""
        return now_mono - self.vouched_mono

    def _ignore(self, reason: str) -> bool:
        self.ignored += 1
        self.reason = reason
        return False
