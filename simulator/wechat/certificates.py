"""The simulated WeChat Pay platform certificates (WECHATPAY_V3 §2.3, §10.6; docs/wechatpay-products.md P.5):
self-signed X.509 certificates with `CN=Tenpay.com sign` and a 40-hex-digit serial, issued and rotated on the
simulator's clock, and the `GET /v3/certificates` listing that carries them encrypted with the APIv3 key.

Pure: no I/O, no clock of its own — every operation is given `now`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import secrets
import threading
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import NameOID

from payflow.wechat import crypto
from simulator.wechat.ledger import rfc3339

# "微信支付平台证书的有效期为5年" (official certificate introduction, P.5).
VALIDITY = dt.timedelta(days=5 * 365)
# How long a new certificate is listed before WeChat signs with it. DOC-CERTS says 24 h; the official update
# guide says generated 10 days before the old one expires, phased in over its last 5 days (P.5).
DEFAULT_OVERLAP = dt.timedelta(hours=24)
ASSOCIATED_DATA = "certificate"
SUBJECT = x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com"),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Tenpay.com CA Center"),
    x509.NameAttribute(NameOID.LOCALITY_NAME, "ShenZhen"),
    x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com sign"),
])

# RSA key generation takes tens of milliseconds: key pairs are made once per process and the n-th certificate
# of every simulator in it uses the n-th. Certificates (serials, validity) are each simulator's own.
_KEY_POOL: list[RSAPrivateKey] = []
_KEY_POOL_LOCK = threading.Lock()


def _pooled_key(index: int) -> RSAPrivateKey:
    with _KEY_POOL_LOCK:
        while len(_KEY_POOL) <= index:
            _KEY_POOL.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _KEY_POOL[index]


@dataclasses.dataclass(frozen=True, eq=False)
class PlatformCertificate:
    """One issued certificate and the private key WeChat signs with under its serial. WeChat signs with it from
    `activates_at` (= its not_before) until a newer one activates; it is listed until it expires."""

    serial: str  # 40 upper-case hex digits, as Wechatpay-Serial names it
    private_key: RSAPrivateKey = dataclasses.field(repr=False)
    pem: bytes = dataclasses.field(repr=False)
    not_before: dt.datetime
    not_after: dt.datetime
    issued_at: dt.datetime

    @property
    def activates_at(self) -> dt.datetime:
        return self.not_before

    def valid_at(self, moment: dt.datetime) -> bool:
        return self.not_before <= moment <= self.not_after


class PlatformCertificates:
    """Every platform certificate one merchant's simulated WeChat Pay has issued, oldest first."""

    def __init__(self, seed: int = 0, *, validity: dt.timedelta = VALIDITY) -> None:
        if validity <= dt.timedelta(0):
            raise ValueError("certificate validity must be positive")
        self.validity = validity
        self._serials = random.Random(f"wechat-sim:certificates:{seed}")
        self._issued: list[PlatformCertificate] = []

    def __bool__(self) -> bool:
        return bool(self._issued)

    def all(self) -> list[PlatformCertificate]:
        return list(self._issued)

    def get(self, serial: str) -> PlatformCertificate | None:
        wanted = serial.upper()
        return next((c for c in self._issued if c.serial == wanted), None)

    def issue(self, now: dt.datetime, *, starts: dt.datetime | None = None,
              validity: dt.timedelta | None = None) -> PlatformCertificate:
        """A new certificate valid from `starts` (default `now`) for `validity` (default the authority's)."""
        validity = self.validity if validity is None else validity
        if validity <= dt.timedelta(0):
            raise ValueError("certificate validity must be positive")
        # X.509 times have whole seconds; so do WeChat's effective_time / expire_time.
        not_before = (starts or now).replace(microsecond=0)
        not_after = not_before + validity
        key = _pooled_key(len(self._issued))
        # A positive serial below 2**159 (X.509's 20 octets) with exactly 40 hex digits, like 5157F09E....
        serial_number = self._serials.randrange(16**39, 8 * 16**39)
        cert = (x509.CertificateBuilder().subject_name(SUBJECT).issuer_name(SUBJECT)
                .public_key(key.public_key()).serial_number(serial_number)
                .not_valid_before(not_before).not_valid_after(not_after)
                .sign(key, hashes.SHA256()))
        issued = PlatformCertificate(
            serial=f"{serial_number:040X}", private_key=key,
            pem=cert.public_bytes(serialization.Encoding.PEM),
            not_before=not_before.astimezone(dt.UTC), not_after=not_after.astimezone(dt.UTC),
            issued_at=now,
        )
        self._issued.append(issued)
        return issued

    def rotate(self, now: dt.datetime, *, overlap: dt.timedelta = DEFAULT_OVERLAP,
               validity: dt.timedelta | None = None) -> PlatformCertificate:
        """Issue the successor: listed (first) from now, signing from `now + overlap`; the one it replaces
        keeps signing until then and stays listed until it expires."""
        if overlap < dt.timedelta(0):
            raise ValueError("overlap must not be negative")
        return self.issue(now, starts=now + overlap, validity=validity)

    def listed(self, now: dt.datetime) -> list[PlatformCertificate]:
        """What `/v3/certificates` lists at `now`: every unexpired certificate, the newest first (a successor
        that is not valid yet included, so merchants can deploy it before WeChat signs with it)."""
        return [c for c in reversed(self._issued) if now <= c.not_after]

    def signing(self, now: dt.datetime) -> PlatformCertificate | None:
        """The certificate WeChat signs with at `now`: the newest one whose window has opened, even an expired
        one when nothing newer exists (a merchant who never rotated sees its answers fail verification)."""
        started = [c for c in self._issued if c.not_before <= now]
        if not started:
            return self._issued[0] if self._issued else None
        current = [c for c in started if now <= c.not_after]
        return (current or started)[-1]

    def download(self, apiv3_key: str, now: dt.datetime) -> dict[str, Any]:
        """The `GET /v3/certificates` body (§10.6): each listed certificate's PEM sealed with AEAD_AES_256_GCM
        under the APIv3 key, associated data "certificate", a fresh 12-character nonce per entry."""
        data = []
        for cert in self.listed(now):
            nonce = secrets.token_hex(6)  # 12 lower-case hex characters, like "61f9c719728a"
            data.append({
                "serial_no": cert.serial,
                "effective_time": rfc3339(cert.not_before),
                "expire_time": rfc3339(cert.not_after),
                "encrypt_certificate": {
                    "algorithm": "AEAD_AES_256_GCM",
                    "nonce": nonce,
                    "associated_data": ASSOCIATED_DATA,
                    "ciphertext": crypto.aead_encrypt(apiv3_key, nonce, ASSOCIATED_DATA, cert.pem),
                },
            })
        return {"data": data}

    def to_json(self, now: dt.datetime) -> list[dict[str, Any]]:
        """Every certificate with its PEM and state at `now`, the newest first (for `/sim/v1/certificates`)."""
        current = self.signing(now)
        listed = set(map(id, self.listed(now)))
        return [{
            "serial_no": c.serial,
            "effective_time": rfc3339(c.not_before),
            "expire_time": rfc3339(c.not_after),
            "issued_at": rfc3339(c.issued_at),
            "listed": id(c) in listed,
            "current": c is current,  # the one WeChat signs with when it signs with a certificate
            "pem": c.pem.decode("ascii"),
        } for c in reversed(self._issued)]
