"""recallclient.freshness: a vouch counts from the sender's stamp, never from when it was read."""

import math

import pytest
from recallclient.freshness import Freshness

INTERVAL = 1.0
SKEW = 0.5
WALL = 1_800_000_000.0  # the receiver's wall clock at "now"
MONO = 5_000.0  # the receiver's monotonic clock at "now"


def fresh() -> Freshness:
    return Freshness(SKEW)


def test_a_vouch_counts_from_when_it_was_made():
    f = fresh()
    assert f.vouch(WALL - 0.3, INTERVAL, WALL, MONO)
    assert f.staleness(MONO) == pytest.approx(0.3)
    assert f.vouched_wall == WALL - 0.3  # the sender's stamp, passed on as it is


def test_a_vouch_read_late_does_not_count():
    """What a paused process finds in its socket buffer: old vouches, however many."""
    f = fresh()
    assert f.vouch(WALL - 10, INTERVAL, WALL - 9.9, MONO - 9.9)  # counted when it was current
    for late in (WALL - 3.0, WALL - 2.0, WALL - 1.6):  # read now, made seconds ago
        assert not f.vouch(late, INTERVAL, WALL, MONO)
        assert "after it was made" in f.reason
    assert f.staleness(MONO) == pytest.approx(10)  # still as stale as the last vouch that counted
    assert f.ignored == 3


@pytest.mark.parametrize("offset", [0.4, -0.4])
def test_a_sender_clock_off_by_less_than_the_skew_still_vouches(offset):
    f = fresh()
    assert f.vouch(WALL + offset, INTERVAL, WALL, MONO)  # made "now" by a clock `offset` off
    assert f.staleness(MONO) == pytest.approx(max(0.0, -offset))  # ahead: counts as now, never as future


def test_a_sender_clock_ahead_by_more_than_the_skew_is_reported_not_trusted():
    f = fresh()
    assert not f.vouch(WALL + 2.0, INTERVAL, WALL, MONO)
    assert "ahead" in f.reason and f.ignored == 1
    assert f.staleness(MONO) == math.inf


def test_a_sender_clock_behind_by_more_than_interval_and_skew_is_reported():
    f = fresh()
    assert not f.vouch(WALL - 2.0, INTERVAL, WALL, MONO)
    assert "behind" in f.reason and f.staleness(MONO) == math.inf


def test_vouches_only_move_forward_and_an_unstamped_event_vouches_nothing():
    f = fresh()
    assert f.vouch(WALL - 0.1, INTERVAL, WALL, MONO)
    assert f.vouch(WALL - 0.9, INTERVAL, WALL, MONO)  # counts, but is older than what we have
    assert f.vouched_wall == WALL - 0.1 and f.staleness(MONO) == pytest.approx(0.1)
    assert not f.vouch(0.0, INTERVAL, WALL, MONO) and f.reason == "" and f.ignored == 0


def test_restore_is_as_stale_as_the_saved_vouch_and_a_future_one_stays_stale():
    f = fresh()
    f.restore(WALL - 30, WALL, MONO)
    assert f.staleness(MONO) == pytest.approx(30)
    g = fresh()
    g.restore(WALL + 30, WALL, MONO)  # a clock that went back
    assert g.staleness(MONO) == math.inf


def test_a_negative_skew_is_refused():
    with pytest.raises(ValueError, match="max_skew"):
        Freshness(-1)
