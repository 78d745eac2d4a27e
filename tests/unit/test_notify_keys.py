"""Notifications after the merchant changed its APIv3 key: the previous key opens what the current one cannot."""

from __future__ import annotations

import dataclasses
import time

import pytest

from payflow import errors
from payflow.devkeys import KeySet
from payflow.settings import Settings
from payflow.wechat import crypto
from payflow.wechat.notify import MalformedNotification, NotificationVerifier
from tests import notifications as wx

NOW = 1_764_158_400
CURRENT = "C" * 32
PREVIOUS = "P" * 32


def _notification(keyset: KeySet, apiv3_key: str, *, at: int = NOW) -> tuple[dict[str, str], bytes]:
    body = wx.envelope(dataclasses.replace(keyset, apiv3_key=apiv3_key), wx.transaction(keyset, "PF0000000001", 1999))
    return wx.signed_headers(keyset, body, timestamp=at), body


def _verifier(keyset: KeySet, previous: str | None) -> NotificationVerifier:
    return NotificationVerifier({keyset.pub_key_id: keyset.platform_public_key}, CURRENT,
                                previous_apiv3_key=previous, now=lambda: NOW)


@pytest.mark.parametrize("key", [CURRENT, PREVIOUS])
def test_the_current_and_the_previous_key_both_open_a_notification(keyset: KeySet, key: str) -> None:
    verified = _verifier(keyset, PREVIOUS).verify(*_notification(keyset, key))
    assert verified.transaction is not None and verified.transaction.out_trade_no == "PF0000000001"


def test_without_the_previous_key_an_old_notification_is_refused_so_wechat_retries(keyset: KeySet) -> None:
    with pytest.raises(MalformedNotification, match="cannot decrypt"):
        _verifier(keyset, None).verify(*_notification(keyset, PREVIOUS))


def test_a_key_that_is_neither_is_refused(keyset: KeySet) -> None:
    with pytest.raises(MalformedNotification, match="cannot decrypt"):
        _verifier(keyset, PREVIOUS).verify(*_notification(keyset, "X" * 32))


def test_the_previous_key_comes_from_the_settings(keyset: KeySet, settings: Settings) -> None:
    settings = dataclasses.replace(settings, wechat_apiv3_key=CURRENT, wechat_apiv3_key_previous=PREVIOUS)
    verifier = NotificationVerifier.from_settings(settings)
    assert verifier is not None
    verifier.verify(*_notification(keyset, PREVIOUS, at=int(time.time())))
    assert Settings.from_env({"PAYFLOW_WECHAT_APIV3_KEY_PREVIOUS": PREVIOUS}).wechat_apiv3_key_previous == PREVIOUS
    assert PREVIOUS not in repr(settings)
    with pytest.raises(errors.SettingsError, match="^PAYFLOW_WECHAT_APIV3_KEY_PREVIOUS: must be exactly 32"):
        Settings.from_env({"PAYFLOW_WECHAT_APIV3_KEY_PREVIOUS": "short"})


def test_decrypt_any_raises_the_first_keys_error() -> None:
    sealed = crypto.aead_encrypt(PREVIOUS, "0123456789ab", "transaction", b"{}")
    assert crypto.aead_decrypt_any([CURRENT, PREVIOUS], "0123456789ab", "transaction", sealed) == b"{}"
    with pytest.raises(crypto.DecryptionFailed):
        crypto.aead_decrypt_any([CURRENT], "0123456789ab", "transaction", sealed)
    with pytest.raises(crypto.DecryptionFailed, match="no APIv3 key"):
        crypto.aead_decrypt_any([], "0123456789ab", "transaction", sealed)
