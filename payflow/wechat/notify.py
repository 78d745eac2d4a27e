"""Inbound payment notifications: verify the signature over the raw body, then decrypt the resource.

Nothing here trusts the body before the signature verified; business checks happen in the service.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from payflow import errors
from payflow.settings import Settings
from payflow.wechat import crypto, trust
from payflow.wechat.api import Transaction
from payflow.wechat.certificates import KeyRing
from payflow.wechat.client import parse_transaction

TRANSACTION_SUCCESS = "TRANSACTION.SUCCESS"


class NotificationRejected(errors.PayflowError):
    """The notification cannot be accepted; WeChat gets a non-2xx and will deliver it again."""

    code = "notification_rejected"
    status = 400


class BadSignature(NotificationRejected):
    code = "bad_signature"
    status = 401


class StaleNotification(NotificationRejected):
    code = "stale"
    status = 401


class MalformedNotification(NotificationRejected):
    code = "malformed"
    status = 400


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedNotification:
    notification_id: str
    event_type: str
    create_time: str
    resource: dict[str, Any]  # decrypted; payment facts, never secrets
    transaction: Transaction | None  # None unless the resource is a transaction
    resource_json: str  # the decrypted resource as sent


class Verifier(Protocol):
    """Checks a notification's signature and decrypts it; `NotificationVerifier` is the real one."""

    def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedNotification:
        """Raises `NotificationRejected` (or a subclass) for anything that must not be accepted."""
        ...


class NotificationVerifier:
    @classmethod
    def from_settings(cls, settings: Settings, *, keys: KeyRing | None = None) -> NotificationVerifier | None:
        """None when the settings lack the APIv3 key, or the public key that PAYFLOW_WECHAT_KEY_MODE needs;
        `keys` is the ring shared with the API client (default: a new one for the mode)."""
        if not settings.wechat_apiv3_key:
            return None
        if trust.uses_public_key(settings) and not (settings.wechat_pubkey_id and settings.wechat_pubkey_file):
            return None
        return cls(keys if keys is not None else trust.key_ring(settings), settings.wechat_apiv3_key,
                   previous_apiv3_key=settings.wechat_apiv3_key_previous)

    def __init__(self, platform_keys: Mapping[str, RSAPublicKey], apiv3_key: str,
                 *, previous_apiv3_key: str | None = None, now: Callable[[], float] = time.time) -> None:
        # A KeyRing is kept as it is (its certificates change while payflow runs); a plain mapping is copied.
        self._keys = platform_keys if isinstance(platform_keys, KeyRing) else dict(platform_keys)
        # After the merchant changes the APIv3 key, WeChat's retries of what it sent before still carry the old
        # key's ciphertext for up to 24h4m (its retry schedule): the previous key opens them meanwhile.
        self._apiv3_keys = (apiv3_key,) if previous_apiv3_key is None else (apiv3_key, previous_apiv3_key)
        self._now = now

    def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedNotification:
        try:
            crypto.verify_signed_message(headers, body, self._keys, now=self._now())
        except crypto.TimestampSkewed as exc:
            raise StaleNotification(str(exc)) from None
        except crypto.CryptoError as exc:
            raise BadSignature(str(exc)) from None
        try:
            envelope = json.loads(body)
            resource = envelope["resource"]
            notification_id = envelope["id"]
            event_type = envelope["event_type"]
            if not isinstance(resource, dict) or not isinstance(notification_id, str) or not notification_id:
                raise TypeError("resource must be an object and id a string")
            if resource.get("algorithm") != "AEAD_AES_256_GCM":
                raise ValueError(f"unsupported algorithm {resource.get('algorithm')!r}")
            plaintext = crypto.aead_decrypt_any(self._apiv3_keys, resource["nonce"],
                                                resource.get("associated_data"), resource["ciphertext"])
            resource_json = plaintext.decode("utf-8")
            decrypted = json.loads(resource_json)
            if not isinstance(decrypted, dict):
                raise TypeError("decrypted resource is not an object")
        except crypto.CryptoError as exc:
            raise MalformedNotification(f"cannot decrypt the resource: {exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedNotification(f"malformed notification: {exc}") from None
        transaction = None
        if resource.get("original_type", "transaction") == "transaction" and "trade_state" in decrypted:
            try:
                transaction = parse_transaction(decrypted)
            except errors.WechatError as exc:
                raise MalformedNotification(str(exc)) from None
        return VerifiedNotification(notification_id, str(event_type), str(envelope.get("create_time", "")),
                                    decrypted, transaction, resource_json)
