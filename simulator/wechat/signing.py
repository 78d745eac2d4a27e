"""Which key the simulated WeChat Pay signs an answer or a notification with (WECHATPAY_V3 §2.3;
docs/wechatpay-products.md P.6): the WeChat Pay public key's private key under its `PUB_KEY_ID_...` id, or a
platform certificate's under its serial, by the merchant's key mode.

- `pubkey`: everything is signed with the public key (merchants onboarded since the public key exists).
- `certificates`: everything is signed with the current platform certificate.
- `both`, the migration period: an answer is signed with the key the request's `Wechatpay-Serial` names (a
  request naming none, or a certificate, gets the current certificate); each notification attempt uses the
  public key with probability `pubkey_share`, else the certificate, from a seeded stream of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import random
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from payflow.devkeys import KeySet
from simulator.wechat.certificates import PlatformCertificates

PUBKEY_PREFIX = "PUB_KEY_ID_"


class KeyMode(enum.StrEnum):
    PUBKEY = "pubkey"
    CERTIFICATES = "certificates"
    BOTH = "both"


@dataclasses.dataclass(frozen=True)
class SigningKey:
    serial: str  # what Wechatpay-Serial says
    private_key: RSAPrivateKey = dataclasses.field(repr=False)


class Signer:
    """The key mode of one simulated merchant and the keys it implies, on the simulator's clock."""

    def __init__(self, keys: KeySet, certificates: PlatformCertificates, mode: KeyMode = KeyMode.PUBKEY, *,
                 seed: int = 0, pubkey_share: float = 0.5) -> None:
        self.public = SigningKey(keys.pub_key_id, keys.platform_private_key)
        self.certificates = certificates
        self._rng = random.Random(f"wechat-sim:signing:{seed}")
        self.mode = KeyMode(mode)
        self.pubkey_share = 0.5
        self.set_share(pubkey_share)

    def switch(self, mode: KeyMode, now: dt.datetime, *, pubkey_share: float | None = None) -> None:
        """Sign by `mode` from `now` on; a mode that signs with certificates issues the first one now if this
        merchant has none yet."""
        mode = KeyMode(mode)
        if pubkey_share is not None:
            self.set_share(pubkey_share)
        self.mode = mode
        self.ensure_certificate(now)

    def set_share(self, pubkey_share: float) -> None:
        if not 0.0 <= pubkey_share <= 1.0:
            raise ValueError("pubkey_share must be between 0 and 1")
        self.pubkey_share = pubkey_share

    def ensure_certificate(self, now: dt.datetime) -> None:
        """A merchant in a certificate mode has at least one certificate (issued at `now` if it had none)."""
        if self.mode is not KeyMode.PUBKEY and not self.certificates:
            self.certificates.issue(now)

    def knows(self, serial: str, now: dt.datetime) -> bool:
        """Whether a request's `Wechatpay-Serial` names a key of this merchant's WeChat Pay: the public key, or
        a platform certificate listed at `now`."""
        if serial == self.public.serial:
            return True
        return any(c.serial == serial.upper() for c in self.certificates.listed(now))

    def for_response(self, requested_serial: str | None, now: dt.datetime) -> SigningKey:
        if self.mode is KeyMode.PUBKEY:
            return self.public
        if self.mode is KeyMode.BOTH and requested_serial is not None and requested_serial.startswith(PUBKEY_PREFIX):
            return self.public
        return self._certificate_key(now)

    def for_notification(self, now: dt.datetime) -> SigningKey:
        if self.mode is KeyMode.PUBKEY:
            return self.public
        if self.mode is KeyMode.BOTH:
            # Rolled even when the share is 0 or 1, so changing it does not shift the stream's later rolls.
            use_public = self._rng.random() < self.pubkey_share
            return self.public if use_public else self._certificate_key(now)
        return self._certificate_key(now)

    def _certificate_key(self, now: dt.datetime) -> SigningKey:
        self.ensure_certificate(now)
        cert = self.certificates.signing(now)
        assert cert is not None
        return SigningKey(cert.serial, cert.private_key)

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        current = self.certificates.signing(now) if self.certificates else None
        return {
            "mode": str(self.mode),
            "pubkey_share": self.pubkey_share,
            "pub_key_id": self.public.serial,
            "certificate_serial": None if current is None else current.serial,
            "certificates": self.certificates.to_json(now),
        }
