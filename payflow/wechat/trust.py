"""Which keys payflow trusts WeChat's signatures with, from the settings: `PAYFLOW_WECHAT_KEY_MODE`.

- `pubkey` (the default): the WeChat Pay public key, `PAYFLOW_WECHAT_PUBKEY_ID` / `_FILE`.
- `certificates`: platform certificates, downloaded from `/v3/certificates` and kept current by a
  `CertificateKeeper` (saved to `PAYFLOW_WECHAT_CERTIFICATES_FILE`, so a restart while WeChat is unreachable
  still verifies).
- `both`: the migration from certificates to the public key, when WeChat signs with either.

One `KeyRing` serves the API client (answers) and the notification verifier (notifications), so a refresh
reaches both at once.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from payflow import errors
from payflow.settings import Settings
from payflow.wechat import crypto
from payflow.wechat.certificates import CertificateKeeper, Download, KeyRing

KEY_MODES = ("pubkey", "certificates", "both")


def uses_public_key(settings: Settings) -> bool:
    return settings.wechat_key_mode in ("pubkey", "both")


def uses_certificates(settings: Settings) -> bool:
    return settings.wechat_key_mode in ("certificates", "both")


def key_ring(settings: Settings) -> KeyRing:
    """The ring for the configured mode: the public key loaded (pubkey, both), certificates to come."""
    public: dict[str, RSAPublicKey] = {}
    if uses_public_key(settings):
        if not (settings.wechat_pubkey_id and settings.wechat_pubkey_file):
            raise errors.SettingsError("PAYFLOW_WECHAT_KEY_MODE "
                                       f"{settings.wechat_key_mode} needs PAYFLOW_WECHAT_PUBKEY_ID and _FILE")
        try:
            with open(settings.wechat_pubkey_file, "rb") as handle:
                public[settings.wechat_pubkey_id] = crypto.load_public_key(handle.read())
        except (OSError, crypto.CryptoError) as exc:
            raise errors.SettingsError(f"PAYFLOW_WECHAT_PUBKEY_FILE: {exc}") from None
    return KeyRing(public)


def keeper(settings: Settings, ring: KeyRing, download: Download, *,
           monotonic: Callable[[], float] = time.monotonic) -> CertificateKeeper | None:
    """The keeper of `ring`'s certificates in certificates and both modes (None in pubkey mode), with the saved
    set loaded: verification works from the first request, before WeChat is asked."""
    if not uses_certificates(settings):
        return None
    apiv3 = [k for k in (settings.wechat_apiv3_key, settings.wechat_apiv3_key_previous) if k]
    kept = CertificateKeeper(ring, download, apiv3, path=pathlib.Path(settings.wechat_certificates_file),
                             monotonic=monotonic)
    kept.load()
    return kept
