"""`verify_signature` as a backend calls it: whatever arrives in the headers, only `InvalidSignature`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from payflow import signing
from payflow.backend import InvalidSignature, verify_signature

SECRET = "whsec-test"
NOW = 1_764_158_400
BODY = b'{"event_id":"evt-1"}'

# Every code point, lone surrogates included: aiohttp decodes undecodable header bytes with surrogateescape.
ANY_TEXT = st.text(alphabet=st.characters(), max_size=40)
TIMESTAMPS = st.one_of(
    ANY_TEXT,
    st.just(str(NOW)),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=12),  # "²", "١٢٣"
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),  # too big for float, or for int()
    st.integers(),
)
SIGNATURES = st.one_of(
    ANY_TEXT,
    ANY_TEXT.map(lambda text: f"v1={text}"),
    st.lists(ANY_TEXT.map(lambda text: f"v1={text}"), max_size=4).map(",".join),
    st.binary(max_size=70),
)
VALUES = st.one_of(st.none(), ANY_TEXT, st.binary(max_size=20), st.integers())
ONE_SECRET = st.one_of(st.just(SECRET), ANY_TEXT, st.binary(max_size=16))
# What a backend may pass while it rolls its secret (a list or tuple of them), and what it must not crash on.
SECRETS = st.one_of(
    ONE_SECRET,
    st.lists(st.one_of(ONE_SECRET, VALUES), max_size=3),
    st.lists(ONE_SECRET, max_size=3).map(tuple),
    st.binary(max_size=8).map(bytearray),
    VALUES,
)
NAMES = st.sampled_from([signing.TIMESTAMP_HEADER, signing.SIGNATURE_HEADER, signing.TIMESTAMP_HEADER.lower(),
                         signing.SIGNATURE_HEADER.upper(), signing.IDEMPOTENCY_HEADER, "Content-Type"])


@st.composite
def header_sets(draw: st.DrawFn) -> Any:
    headers: dict[Any, Any] = {}
    if draw(st.booleans()):
        headers[signing.TIMESTAMP_HEADER] = draw(st.one_of(TIMESTAMPS, VALUES))
    if draw(st.booleans()):
        headers[signing.SIGNATURE_HEADER] = draw(st.one_of(SIGNATURES, VALUES))
    extra = draw(st.dictionaries(st.one_of(NAMES, ANY_TEXT, st.integers(), st.none()), VALUES, max_size=3))
    headers.update(extra)
    return draw(st.sampled_from([headers, None, list(headers.items())]))


@settings(max_examples=400, deadline=None)
@given(headers=header_sets(), body=st.one_of(st.binary(max_size=64), ANY_TEXT, st.none()),
       secret=SECRETS)
@example(headers={signing.TIMESTAMP_HEADER: "²", signing.SIGNATURE_HEADER: "v1=00"}, body=BODY, secret=SECRET)
@example(headers={signing.TIMESTAMP_HEADER: str(NOW), signing.SIGNATURE_HEADER: "v1=é"}, body=BODY, secret=SECRET)
@example(headers={signing.TIMESTAMP_HEADER: str(NOW), signing.SIGNATURE_HEADER: "v1=\udcff"}, body=BODY,
         secret=SECRET)
@example(headers={signing.TIMESTAMP_HEADER: "9" * 400, signing.SIGNATURE_HEADER: "v1=00"}, body=BODY, secret=SECRET)
@example(headers={signing.TIMESTAMP_HEADER: "9" * 5000, signing.SIGNATURE_HEADER: "v1=00"}, body=BODY,
         secret=SECRET)
@example(headers={signing.TIMESTAMP_HEADER: None, signing.SIGNATURE_HEADER: None}, body=BODY, secret=SECRET)
@example(headers={signing.TIMESTAMP_HEADER: str(NOW), signing.SIGNATURE_HEADER: b"v1=00"}, body=BODY, secret=SECRET)
@example(headers={1: "x", None: "y"}, body=BODY, secret=SECRET)
@example(headers=None, body=BODY, secret=SECRET)
@example(headers={signing.TIMESTAMP_HEADER: str(NOW), signing.SIGNATURE_HEADER: "v1=00"}, body="text, not bytes",
         secret=SECRET)
@example(headers={signing.TIMESTAMP_HEADER: str(NOW), signing.SIGNATURE_HEADER: "v1=00"}, body=BODY,
         secret="\udcff")
@example(headers={signing.TIMESTAMP_HEADER: str(NOW), signing.SIGNATURE_HEADER: "v1=00"}, body=BODY, secret=[])
@example(headers={signing.TIMESTAMP_HEADER: str(NOW), signing.SIGNATURE_HEADER: "v1=00"}, body=BODY,
         secret=[SECRET, None, 7])
@example(headers={signing.TIMESTAMP_HEADER: str(NOW), signing.SIGNATURE_HEADER: "v1=00"}, body=BODY,
         secret=(SECRET, "\udcff"))
def test_any_header_values_raise_only_invalid_signature(headers: Any, body: Any, secret: Any) -> None:
    # Random values never carry the right MAC, so the only acceptable outcome is InvalidSignature.
    with pytest.raises(InvalidSignature):
        verify_signature(secret, headers, body, now=float(NOW))  # a float, as time.time()


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=256), age=st.integers(min_value=-300, max_value=300),
       others=st.lists(ANY_TEXT.map(lambda text: f"v1={text}"), max_size=3))
def test_a_genuine_signature_still_verifies(body: bytes, age: int, others: list[str]) -> None:
    headers: Mapping[str, str] = signing.sign_headers(SECRET, body, "evt-1", now=NOW - age)
    verify_signature(SECRET, headers, body, now=NOW)
    rotated = ",".join([*others, headers[signing.SIGNATURE_HEADER]])
    verify_signature(SECRET, CIMultiDict({**headers, signing.SIGNATURE_HEADER: rotated}), body, now=NOW)
    with pytest.raises(InvalidSignature):
        verify_signature(SECRET, headers, body + b"x", now=NOW)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=256),
       others=st.lists(st.one_of(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40),
                                 st.binary(max_size=16)).filter(lambda s: s not in (SECRET, SECRET.encode())),
                       max_size=3),
       at=st.integers(min_value=0, max_value=3))
def test_any_of_a_list_of_secrets_verifies(body: bytes, others: list[str | bytes], at: int) -> None:
    headers = signing.sign_headers(SECRET, body, "evt-1", now=NOW)
    rolling = [*others[:at], SECRET, *others[at:]]
    verify_signature(rolling, headers, body, now=NOW)
    verify_signature(tuple(rolling), headers, body, now=NOW)
    with pytest.raises(InvalidSignature):
        verify_signature(others, headers, body, now=NOW)  # the signer's secret is not among them


def test_non_ascii_digits_are_not_a_timestamp() -> None:
    # "١٧٦٤١٥٨٤٠٠" passes str.isdigit() and int() reads it as NOW; the signer only ever sends ASCII digits.
    arabic = str(NOW).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    headers = {signing.TIMESTAMP_HEADER: arabic, signing.SIGNATURE_HEADER: signing.signature(SECRET, arabic, BODY)}
    with pytest.raises(InvalidSignature):
        verify_signature(SECRET, headers, BODY, now=NOW)
