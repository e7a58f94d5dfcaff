"""recallclient.jti: canonical jtis round-trip; anything else is rejected."""

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from recallclient.jti import (
    CANONICAL_PREFIX,
    MAX_SERIAL,
    canonical_jti,
    foreign_key,
    looks_canonical,
    serial_from_jti,
)

serials = st.integers(min_value=1, max_value=MAX_SERIAL)


def check_digits(serial: int) -> str:
    """The documented check: four hex digits of CRC-32 over the serial."""
    return format(zlib.crc32(b"rc1:%d" % serial) & 0xFFFF, "04x")


@given(serials)
def test_round_trip(serial):
    jti = canonical_jti(serial)
    assert jti == f"rc1.{serial}.{check_digits(serial)}"
    assert looks_canonical(jti)
    assert serial_from_jti(jti) == serial


@pytest.mark.parametrize("serial", [1, 9, 10, 65535, 65536, 2**32, MAX_SERIAL])
def test_round_trip_edges(serial):
    assert serial_from_jti(canonical_jti(serial)) == serial


@pytest.mark.parametrize("serial", [0, -1, MAX_SERIAL + 1, 2**64])
def test_canonical_jti_rejects_out_of_range(serial):
    with pytest.raises(ValueError):
        canonical_jti(serial)


@given(serials, st.integers(min_value=0, max_value=0xFFFF))
def test_wrong_check_digits_rejected(serial, check):
    jti = f"rc1.{serial}.{check:04x}"
    if check == int(check_digits(serial), 16):
        assert serial_from_jti(jti) == serial
    else:
        assert serial_from_jti(jti) is None


@given(serials)
def test_rejects_non_canonical_spellings(serial):
    good = canonical_jti(serial)
    check = check_digits(serial)
    variants = [
        good.upper(),
        good.replace("rc1.", "RC1.", 1),
        f"rc1.0{serial}.{check}",           # leading zero
        f"rc1.+{serial}.{check}",
        f"rc1. {serial}.{check}",
        f"rc1.{serial}.{check.upper()}" if check != check.upper() else f"rc1.{serial}.{check}X",
        f"rc1.{serial}.{check}0",           # five check digits
        f"rc1.{serial}.{check[:3]}",        # three
        f"rc1.{serial}",                    # no check
        f"rc2.{serial}.{check}",
        f"rc1.{serial}.{check}\n",
        f" {good}",
        f"{good} ",
        f"x{good}",
        f"rc1.{serial}_{check}",
    ]
    for jti in variants:
        assert serial_from_jti(jti) is None, jti


@pytest.mark.parametrize("jti", [
    "", "rc1.", "rc1..0000", "abc", "rc1.0.0000", f"rc1.0.{check_digits(0)}",
    f"rc1.{MAX_SERIAL + 1}.{check_digits(MAX_SERIAL + 1)}",      # 19 digits, too large
    f"rc1.{2**64}.{check_digits(2**64)}",                         # 20 digits
    f"rc1.{'9' * 19}.{check_digits(int('9' * 19))}",
    "rc1.\u0661.0000",                                            # a non-ASCII digit
    f"rc1.1{chr(0x0662)}.{check_digits(12)}",
])
def test_rejects_invalid(jti):
    assert serial_from_jti(jti) is None


def test_leading_zeros_rejected_even_with_matching_check():
    # The check is over the number, so "007" and "7" share check digits;
    # only the shortest spelling is canonical.
    assert serial_from_jti(f"rc1.007.{check_digits(7)}") is None
    assert serial_from_jti(f"rc1.7.{check_digits(7)}") == 7


def test_looks_canonical_is_about_the_prefix_only():
    assert CANONICAL_PREFIX == "rc2."
    assert looks_canonical("rc1.whatever") and looks_canonical("rc2.whatever")
    assert looks_canonical("rc1.5.0000") and looks_canonical("rc2.5.00000000")
    assert not looks_canonical("rc3.5.0000")
    assert not looks_canonical("RC1.5")
    assert not looks_canonical("")


@given(st.integers(min_value=1, max_value=MAX_SERIAL), st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_a_bound_jti_names_its_serial_in_its_store_only(serial, store, other):
    jti = canonical_jti(serial, store)
    assert jti.startswith("rc2.") and len(jti.rpartition(".")[2]) == 8
    assert serial_from_jti(jti, store) == serial
    assert serial_from_jti(jti) is None  # a bound jti needs its store
    if canonical_jti(serial, other) != jti:  # 2^-32: two stores' check digits may meet
        assert serial_from_jti(jti, other) is None


def test_the_unbound_form_is_read_in_every_store():
    assert serial_from_jti(canonical_jti(42), "any-store") == 42
    assert serial_from_jti(canonical_jti(42)) == 42


@given(st.text(max_size=40), st.text(max_size=40))
def test_foreign_key_stable_nonzero_64bit(issuer, jti):
    key = foreign_key(issuer, jti)
    assert key == foreign_key(issuer, jti)
    assert 0 < key < 2**64


def test_foreign_key_pinned_values():
    # Stability across processes and releases: replicas and the store must
    # agree on keys, so the function must not change silently.
    assert foreign_key("https://idp", "ext-1") == 9409910340981565750
    assert foreign_key("", "") == 8792463403261312053
    assert foreign_key("https://idp", "ext-1") != foreign_key("https://idp", "ext-2")
    assert foreign_key("https://idp", "ext-1") != foreign_key("https://other", "ext-1")
    assert foreign_key("ab", "c") != foreign_key("a", "bc")


@given(st.lists(st.tuples(st.text("abc/:", max_size=6), st.text("xyz.1", max_size=6)),
                min_size=2, max_size=30, unique=True))
def test_foreign_key_separates_small_pairs(pairs):
    # NUL never appears (the server rejects it), so the separator is unambiguous
    # and distinct pairs get distinct keys (a 64-bit collision here would be news).
    keys = {foreign_key(i, j) for i, j in pairs}
    assert len(keys) == len(pairs)


@given(serials, st.text(min_size=1, max_size=40))
def test_bound_spellings_other_than_the_canonical_one_are_refused(serial, store):
    # Each variant carries the check digits of its own digits, so only the
    # spelling rule can refuse it: one decimal form per serial, nothing that
    # int() would read as the same number.
    def spelled(digits: str) -> str:
        return f"rc2.{digits}.{zlib.crc32(b'rc2:%s:%s' % (store.encode(), digits.encode())):08x}"

    assert serial_from_jti(spelled(str(serial)), store) == serial
    for digits in (f"0{serial}", f"+{serial}", f" {serial}", f"{serial} ", f"{serial}_0",
                   str(serial).replace("1", "\u0661"), f"{serial}" + "0" * 19):
        if digits != str(serial):
            assert serial_from_jti(spelled(digits), store) is None, digits
    jti = canonical_jti(serial, store)
    for variant in (jti.upper(), f" {jti}", f"{jti}.", f"{jti}.x", jti.replace("rc2.", "rc2..", 1)):
        if variant != jti:
            assert serial_from_jti(variant, store) is None, variant
