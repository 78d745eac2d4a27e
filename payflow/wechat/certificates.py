"""WeChat Pay platform certificates: the older way of trusting WeChat's signatures, beside the public key.

A merchant registered before WeChat introduced its public key verifies with platform certificates, which
`GET /v3/certificates` lists encrypted with the APIv3 key (WECHATPAY_V3 §2.3, §10.6). `KeyRing` is the one
mapping every verifier reads, by `Wechatpay-Serial`: the public key under its `PUB_KEY_ID_...` id, and each
platform certificate under its serial while it is inside its validity window (an expired or not yet valid
certificate is an unknown serial, refused like a bad signature). `CertificateKeeper` downloads the list,
checks it, keeps the last good set on disk (so a restart while WeChat is unreachable still verifies), and
refreshes it on a schedule and when a message names a serial the ring does not know, at most once a minute.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import pathlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from payflow import logs
from payflow.wechat import crypto

log = logs.get_logger(__name__)

CERTIFICATES_PATH = "/v3/certificates"
PUBKEY_PREFIX = "PUB_KEY_ID_"
# WeChat lists a new certificate 24 h before it signs with it; twice a day catches it with time to spare.
REFRESH_EVERY = 12 * 3600.0
# A serial nobody knows triggers a download at most this often: a forger cannot make payflow hammer WeChat.
UNKNOWN_SERIAL_REFRESH = 60.0


class CertificateError(crypto.CryptoError):
    """A certificate list that cannot be trusted: malformed, undecryptable, or not what it says it is."""


@dataclasses.dataclass(frozen=True)
class PlatformCertificate:
    serial: str  # upper-case hex, as WeChat writes it in Wechatpay-Serial
    public_key: RSAPublicKey
    not_before: dt.datetime
    not_after: dt.datetime
    pem: bytes

    def valid_at(self, moment: dt.datetime) -> bool:
        return self.not_before <= moment <= self.not_after


def load_certificate(pem: bytes, *, serial: str | None = None) -> PlatformCertificate:
    """A platform certificate from its PEM; `serial`, when given, must be the certificate's own."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from None
    key = cert.public_key()
    if not isinstance(key, RSAPublicKey):
        raise CertificateError("platform certificate does not hold an RSA key")
    own = f"{cert.serial_number:040X}"  # WeChat writes 40 hex digits
    if serial is not None and own.lstrip("0") != serial.upper().lstrip("0"):
        raise CertificateError(f"certificate listed as {serial} has serial {own}")
    return PlatformCertificate(own, key, cert.not_valid_before_utc, cert.not_valid_after_utc, pem)


def parse_download(body: bytes | Mapping[str, Any], apiv3_keys: Sequence[str]) -> list[PlatformCertificate]:
    """The certificates of a `/v3/certificates` answer, each decrypted with the APIv3 key (associated data
    `certificate`) and checked against the serial it is listed under. Validity windows are the ring's
    business: a certificate listed 24 h before use is kept and becomes usable when its window opens."""
    try:
        data = json.loads(body) if isinstance(body, bytes) else body
        entries = data["data"]
        if not isinstance(entries, list):
            raise TypeError("data is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise CertificateError(f"malformed certificate list: {exc}") from None
    found = []
    for entry in entries:
        try:
            serial = entry["serial_no"]
            sealed = entry["encrypt_certificate"]
            if sealed.get("algorithm") != "AEAD_AES_256_GCM":
                raise CertificateError(f"unsupported algorithm {sealed.get('algorithm')!r}")
            pem = crypto.aead_decrypt_any(apiv3_keys, sealed["nonce"], sealed.get("associated_data"),
                                          sealed["ciphertext"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise CertificateError(f"malformed certificate entry: {exc!r}") from None
        except crypto.DecryptionFailed as exc:
            raise CertificateError(f"cannot decrypt certificate {entry.get('serial_no')!r}: {exc}") from None
        found.append(load_certificate(pem, serial=str(serial)))
    if not found:
        raise CertificateError("the certificate list is empty")
    return found


class KeyRing(Mapping[str, RSAPublicKey]):
    """WeChat's verification keys by serial: public keys always, platform certificates inside their window.

    A lookup of a serial it cannot answer is remembered (`wanted`), so the keeper knows to download."""

    def __init__(self, public_keys: Mapping[str, RSAPublicKey] | None = None,
                 certificates: Sequence[PlatformCertificate] = (), *, now: Callable[[], float] = time.time) -> None:
        self._public = dict(public_keys or {})
        self._certificates: dict[str, PlatformCertificate] = {}
        self.now = now
        self.wanted: set[str] = set()
        self.replace(certificates)

    def replace(self, certificates: Sequence[PlatformCertificate]) -> None:
        self._certificates = {_serial_key(c.serial): c for c in certificates}
        self.wanted = {s for s in self.wanted if _serial_key(s) not in self._certificates}

    @property
    def certificates(self) -> list[PlatformCertificate]:
        return list(self._certificates.values())

    @property
    def public_keys(self) -> Mapping[str, RSAPublicKey]:
        return self._public

    def __getitem__(self, serial: str) -> RSAPublicKey:
        key = self._public.get(serial)
        if key is not None:
            return key
        if not serial.startswith(PUBKEY_PREFIX):
            cert = self._certificates.get(_serial_key(serial))
            if cert is not None and cert.valid_at(dt.datetime.fromtimestamp(self.now(), dt.UTC)):
                return cert.public_key
        self.wanted.add(serial)
        raise KeyError(serial)

    def __iter__(self) -> Iterator[str]:
        moment = dt.datetime.fromtimestamp(self.now(), dt.UTC)
        yield from self._public
        yield from (c.serial for c in self._certificates.values() if c.valid_at(moment))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def signing_serial(self) -> str:
        """What payflow names in its requests' Wechatpay-Serial: the public key if it has one, else the valid
        certificate that expires last (WeChat signs the answer with the key the request names)."""
        if self._public:
            return next(iter(self._public))
        moment = dt.datetime.fromtimestamp(self.now(), dt.UTC)
        valid = [c for c in self._certificates.values() if c.valid_at(moment)]
        return max(valid, key=lambda c: c.not_after).serial if valid else ""


# GET /v3/certificates: the answer's headers and raw body, its signature not yet checked (it may be signed
# by a certificate only the list itself brings).
def _serial_key(serial: str) -> str:
    """A serial as the ring files it: upper case, leading zeros dropped (hex numbers, however written)."""
    return serial.upper().lstrip("0")


Download = Callable[[], Awaitable[tuple[Mapping[str, str], bytes]]]


class CertificateKeeper:
    """Keeps `ring`'s certificates current: `load()` from the file at start, `refresh()` from WeChat, `run()`
    on a schedule, and `refresh_if_wanted()` after a lookup missed (at most once a minute)."""

    def __init__(self, ring: KeyRing, download: Download, apiv3_keys: Sequence[str], *,
                 path: pathlib.Path | None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ring = ring
        self._download = download
        self._apiv3_keys = tuple(apiv3_keys)
        self.path = path
        self._monotonic = monotonic
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()

    def load(self) -> int:
        """The last good set from disk, if any; returns how many certificates it holds."""
        if self.path is None or not self.path.exists():
            return 0
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            certs = [load_certificate(pem.encode("ascii")) for pem in saved["certificates"]]
        except (OSError, ValueError, KeyError, TypeError, crypto.CryptoError) as exc:
            log.warning("wechat.certificates_unreadable", path=str(self.path), error=str(exc))
            return 0
        self.ring.replace(certs)
        return len(certs)

    async def refresh(self) -> bool:
        """Download and check the list; on success replace the ring's set and save it. A failure keeps the
        set there is (logged), so an unreachable WeChat never costs payflow the keys it already trusts."""
        async with self._lock:
            self._last_attempt = self._monotonic()
            try:
                headers, body = await self._download()
                certs = parse_download(body, self._apiv3_keys)
                # Signed by WeChat with a key payflow trusts already, or by one of the certificates the list
                # brings: those decrypted with the APIv3 key, which only WeChat and the merchant hold.
                bootstrap = KeyRing(self.ring.public_keys, [*self.ring.certificates, *certs], now=self.ring.now)
                crypto.verify_signed_message(headers, body, bootstrap, now=self.ring.now())
            except crypto.CryptoError as exc:
                log.error("alert.wechat_certificates_refused", error=str(exc))
                return False
            except Exception as exc:  # noqa: BLE001 — WeChat unreachable, a 5xx: keep what we have
                log.warning("wechat.certificates_unavailable", error=f"{type(exc).__name__}: {exc}")
                return False
            self.ring.replace(certs)
            self._save(certs)
            log.info("wechat.certificates_refreshed", serials=[c.serial for c in certs])
            return True

    async def refresh_if_wanted(self) -> bool:
        """After a lookup of an unknown serial: download, unless the last attempt was under a minute ago."""
        if not self.ring.wanted:
            return False
        if self._last_attempt is not None and self._monotonic() - self._last_attempt < UNKNOWN_SERIAL_REFRESH:
            return False
        self.ring.wanted.clear()
        return await self.refresh()

    async def run(self, stop: asyncio.Event, *, every: float = REFRESH_EVERY, poll: float = 1.0) -> None:
        """Refresh every `every` seconds, and soon after a miss; until `stop` is set."""
        next_due = self._monotonic() if not self.ring.certificates else self._monotonic() + every
        while not stop.is_set():
            if self._monotonic() >= next_due:
                await self.refresh()
                next_due = self._monotonic() + every
            else:
                await self.refresh_if_wanted()
            try:
                await asyncio.wait_for(stop.wait(), poll)
            except TimeoutError:
                pass

    def _save(self, certs: Sequence[PlatformCertificate]) -> None:
        if self.path is None:
            return
        text = json.dumps({"certificates": [c.pem.decode("ascii") for c in certs]}, indent=1)
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, self.path)  # whole or not at all: a crash mid-write keeps the old file
        except OSError as exc:
            log.warning("wechat.certificates_not_saved", path=str(self.path), error=str(exc))
