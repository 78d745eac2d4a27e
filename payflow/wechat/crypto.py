"""WeChat Pay APIv3 cryptography: SHA256withRSA request/response signatures, AES-256-GCM
resources, JSAPI paySign. Pure functions; the only I/O is reading a PEM file when given a path."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import string
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from multidict import CIMultiDict, CIMultiDictProxy

AUTH_SCHEME = "WECHATPAY2-SHA256-RSA2048"
PROBE_PREFIX = "WECHATPAY/SIGNTEST/"
DEFAULT_TOLERANCE = 300

APIV3_KEY_BYTES = 32
AEAD_NONCE_BYTES = 12

_AUTH_FIELDS = ("mchid", "nonce_str", "signature", "timestamp", "serial_no")
_AUTH_PAIR = re.compile(r'\s*([A-Za-z_]+)="([^"\x00-\x1f]*)"\s*')
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_NONCE_ALPHABET = string.ascii_uppercase + string.digits

PemSource = bytes | str | os.PathLike[str]


class CryptoError(Exception):
    """Bad key material or malformed cryptographic input."""


class SignatureInvalid(CryptoError):
    """A signature, or the headers carrying it, did not verify."""


class TimestampSkewed(CryptoError):
    """A signed message's timestamp is outside the accepted window."""


class DecryptionFailed(CryptoError):
    """An AEAD resource failed authentication or is malformed."""


class AuthorizationParams(TypedDict):
    mchid: str
    nonce_str: str
    signature: str
    timestamp: str
    serial_no: str


class JsapiPayParams(TypedDict):
    appId: str
    timeStamp: str
    nonceStr: str
    package: str
    signType: str
    paySign: str


# -- keys ---------------------------------------------------------------------------------------


def _pem_bytes(pem: PemSource) -> bytes:
    if isinstance(pem, bytes):
        data = pem
    elif isinstance(pem, str):
        data = pem.encode("utf-8")
    else:
        try:
            data = Path(pem).read_bytes()
        except OSError as exc:
            raise CryptoError(f"cannot read PEM file {os.fspath(pem)!r}: {exc.strerror}") from exc
    data = data.strip()
    if not data.startswith(b"-----BEGIN "):
        raise CryptoError("not a PEM document (to read a file, pass a pathlib.Path)")
    return data


def load_private_key(pem: PemSource) -> RSAPrivateKey:
    """Load an RSA private key from PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 PEM, text or path."""
    data = _pem_bytes(pem)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise CryptoError("encrypted private keys are not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CryptoError("invalid private key PEM") from exc
    if not isinstance(key, RSAPrivateKey):
        raise CryptoError(f"expected an RSA private key, got {type(key).__name__}")
    return key


def load_public_key(pem: PemSource) -> RSAPublicKey:
    """Load an RSA public key from SPKI PEM, or take it from an X.509 certificate PEM."""
    data = _pem_bytes(pem)
    key: object
    try:
        if data.startswith(b"-----BEGIN CERTIFICATE-----"):
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CryptoError("invalid public key or certificate PEM") from exc
    if not isinstance(key, RSAPublicKey):
        raise CryptoError(f"expected an RSA public key, got {type(key).__name__}")
    return key


def generate_key_pair(bits: int = 2048) -> tuple[bytes, bytes]:
    """Return (PKCS#8 private PEM, SPKI public PEM) of a fresh RSA key, for development."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def nonce_str(n: int = 32) -> str:
    """Random upper-case alphanumeric string, as the official SDKs send."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(n))


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# -- SHA256withRSA ------------------------------------------------------------------------------


def _to_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _line(value: str, what: str) -> str:
    # A newline inside a field would shift the canonical lines and make two requests collide.
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what} must not contain a line break")
    return value


def sign(private_key: RSAPrivateKey, message: bytes) -> str:
    """Base64 SHA256withRSA (RSASSA-PKCS1-v1_5) signature of `message`."""
    signature = private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def verify(public_key: RSAPublicKey, message: bytes, signature_b64: str) -> None:
    """Check a Base64 SHA256withRSA signature; raise `SignatureInvalid` if it does not match."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureInvalid("signature is not valid Base64") from exc
    if not signature:
        raise SignatureInvalid("signature is empty")
    try:
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as exc:
        raise SignatureInvalid("signature does not match") from exc


def build_request_message(
    method: str,
    url_path_with_query: str,
    timestamp: int | str,
    nonce: str,
    body: bytes | str = b"",
) -> bytes:
    """Canonical request message: METHOD, path?query, timestamp, nonce, body — each + '\\n'."""
    if not url_path_with_query.startswith("/"):
        raise ValueError("sign the path and query as sent on the wire, not a full URL")
    head = "\n".join(
        (
            _line(method.upper(), "method"),
            _line(url_path_with_query, "URL"),
            _line(str(timestamp), "timestamp"),
            _line(nonce, "nonce"),
        )
    )
    return head.encode("utf-8") + b"\n" + _to_bytes(body) + b"\n"


def authorization_header(
    mchid: str,
    serial_no: str,
    private_key: RSAPrivateKey,
    method: str,
    path_with_query: str,
    body: bytes | str,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> str:
    """`Authorization` value for a merchant request, in the field order wechatpayv3 sends."""
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = nonce_str() if nonce is None else nonce
    signature = sign(private_key, build_request_message(method, path_with_query, ts, nonce, body))
    fields = (
        ("mchid", mchid),
        ("nonce_str", nonce),
        ("signature", signature),
        ("timestamp", str(ts)),
        ("serial_no", serial_no),
    )
    for name, value in fields:
        if '"' in value or "," in value:
            raise ValueError(f"{name} must not contain a quote or comma")
    return AUTH_SCHEME + " " + ",".join(f'{name}="{value}"' for name, value in fields)


def parse_authorization_header(value: str) -> AuthorizationParams:
    """Split a merchant `Authorization` value into its five fields (any order, no extras)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme != AUTH_SCHEME:
        raise SignatureInvalid("unsupported authorization scheme")
    fields: dict[str, str] = {}
    pos = 0
    while True:
        match = _AUTH_PAIR.match(rest, pos)
        if match is None:
            raise SignatureInvalid("malformed authorization parameters")
        name, field = match.groups()
        if name not in _AUTH_FIELDS:
            raise SignatureInvalid(f"unknown authorization parameter {name!r}")
        if name in fields:
            raise SignatureInvalid(f"duplicate authorization parameter {name!r}")
        fields[name] = field
        pos = match.end()
        if pos == len(rest):
            break
        if rest[pos] != ",":
            raise SignatureInvalid("malformed authorization parameters")
        pos += 1
    missing = [name for name in _AUTH_FIELDS if not fields.get(name)]
    if missing:
        raise SignatureInvalid(f"authorization lacks {', '.join(missing)}")
    if not _TIMESTAMP.fullmatch(fields["timestamp"]):
        raise SignatureInvalid("authorization timestamp is not an integer")
    return AuthorizationParams(
        mchid=fields["mchid"],
        nonce_str=fields["nonce_str"],
        signature=fields["signature"],
        timestamp=fields["timestamp"],
        serial_no=fields["serial_no"],
    )


# -- responses and notifications ----------------------------------------------------------------


def build_response_message(timestamp: int | str, nonce: str, body: bytes) -> bytes:
    """Canonical response/notification message: timestamp, nonce, body — each + '\\n'."""
    head = f"{_line(str(timestamp), 'timestamp')}\n{_line(nonce, 'nonce')}\n"
    return head.encode("utf-8") + body + b"\n"


def _header_lookup(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Headers looked up by lower-case name. aiohttp's headers already are: used as they are, rather than
    folding every header of every notification."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return headers
    folded: dict[str, str] = {}
    for name, value in headers.items():
        folded.setdefault(name.lower(), value)
    return folded


def verify_signed_message(
    headers: Mapping[str, str],
    body: bytes,
    keys: Mapping[str, RSAPublicKey],
    *,
    now: float,
    tolerance: int = DEFAULT_TOLERANCE,
) -> None:
    """Verify a WeChat Pay response or notification over its raw body bytes.

    Raises `SignatureInvalid` (missing headers, unknown serial, bad signature, signature probe)
    or `TimestampSkewed` (|now - timestamp| >= tolerance).
    """
    found = _header_lookup(headers)
    names = ("wechatpay-timestamp", "wechatpay-nonce", "wechatpay-signature", "wechatpay-serial")
    missing = [name for name in names if not found.get(name)]
    if missing:
        raise SignatureInvalid(f"missing header(s): {', '.join(missing)}")
    timestamp = found["wechatpay-timestamp"]
    nonce = found["wechatpay-nonce"]
    signature = found["wechatpay-signature"]
    serial = found["wechatpay-serial"]

    sig_type = found.get("wechatpay-signature-type")
    if sig_type is not None and sig_type != AUTH_SCHEME:
        raise SignatureInvalid(f"unsupported Wechatpay-Signature-Type {sig_type!r}")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureInvalid("Wechatpay-Timestamp is not an integer")
    key = keys.get(serial)
    if key is None:
        raise SignatureInvalid(f"unknown Wechatpay-Serial {serial!r}")
    age = now - int(timestamp)
    if abs(age) >= tolerance:
        when = "old" if age > 0 else "in the future"
        raise TimestampSkewed(f"Wechatpay-Timestamp {timestamp} is {abs(age):.0f}s {when}")
    # Probes are deliberately unverifiable; failing them like any forgery is what WeChat expects,
    # the distinct message only helps whoever reads the log.
    if signature.startswith(PROBE_PREFIX):
        raise SignatureInvalid("signature probe (WECHATPAY/SIGNTEST/)")
    try:
        message = build_response_message(timestamp, nonce, body)
    except ValueError as exc:
        raise SignatureInvalid("Wechatpay-Nonce contains a line break") from exc
    verify(key, message, signature)


def sign_response_headers(
    private_key: RSAPrivateKey,
    serial: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The Wechatpay-* headers WeChat Pay puts on a signed response or notification."""
    ts = int(time.time()) if timestamp is None else timestamp
    # Real responses carry 32 lower-case hex digits here.
    nonce = secrets.token_hex(16) if nonce is None else nonce
    return {
        "Wechatpay-Timestamp": str(ts),
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": sign(private_key, build_response_message(ts, nonce, body)),
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature-Type": AUTH_SCHEME,
    }


# -- AEAD_AES_256_GCM ---------------------------------------------------------------------------


def _apiv3_key(apiv3_key: bytes | str) -> bytes:
    key = _to_bytes(apiv3_key)
    if len(key) != APIV3_KEY_BYTES:
        raise CryptoError(f"APIv3 key must be {APIV3_KEY_BYTES} bytes, got {len(key)}")
    return key


def _aead_nonce(nonce: str, error: type[CryptoError]) -> bytes:
    raw = nonce.encode("utf-8")
    if len(raw) != AEAD_NONCE_BYTES:
        raise error(f"AEAD nonce must be {AEAD_NONCE_BYTES} bytes, got {len(raw)}")
    return raw


def _gcm_open(key: bytes, nonce: str, associated_data: str | None, ciphertext_b64: str) -> bytes:
    # Key length is the caller's business: the SDKs' published vectors use 16-byte keys.
    try:
        sealed = base64.b64decode(ciphertext_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecryptionFailed("ciphertext is not valid Base64") from exc
    aad = (associated_data or "").encode("utf-8")
    try:
        return AESGCM(key).decrypt(_aead_nonce(nonce, DecryptionFailed), sealed, aad)
    except InvalidTag as exc:
        raise DecryptionFailed("AEAD authentication failed (wrong key, nonce, AAD or data)") from exc


def aead_decrypt(
    apiv3_key: bytes | str,
    nonce: str,
    associated_data: str | None,
    ciphertext_b64: str,
) -> bytes:
    """Decrypt an AEAD_AES_256_GCM resource (Base64 of ciphertext ‖ 16-byte tag)."""
    return _gcm_open(_apiv3_key(apiv3_key), nonce, associated_data, ciphertext_b64)


def aead_decrypt_any(
    apiv3_keys: Sequence[bytes | str],
    nonce: str,
    associated_data: str | None,
    ciphertext_b64: str,
) -> bytes:
    """`aead_decrypt` with each key in turn (the current APIv3 key, then the one before it): a resource
    encrypted before the merchant changed the key still opens. Raises the first key's error if none does."""
    first: DecryptionFailed | None = None
    for key in apiv3_keys:
        try:
            return aead_decrypt(key, nonce, associated_data, ciphertext_b64)
        except DecryptionFailed as exc:
            first = first or exc
    raise first or DecryptionFailed("no APIv3 key to decrypt with")


def aead_encrypt(
    apiv3_key: bytes | str,
    nonce: str,
    associated_data: str | None,
    plaintext: bytes,
) -> str:
    """Encrypt a resource the way WeChat Pay does; returns Base64 of ciphertext ‖ tag."""
    key = _apiv3_key(apiv3_key)
    aad = (associated_data or "").encode("utf-8")
    sealed = AESGCM(key).encrypt(_aead_nonce(nonce, CryptoError), plaintext, aad)
    return base64.b64encode(sealed).decode("ascii")


# -- JSAPI front-end parameters -----------------------------------------------------------------


def pay_sign(private_key: RSAPrivateKey, appid: str, timestamp: str, nonce: str, package: str) -> str:
    """paySign over `appId\\ntimeStamp\\nnonceStr\\npackage\\n` (signType is not signed)."""
    lines = (
        _line(appid, "appid"),
        _line(timestamp, "timestamp"),
        _line(nonce, "nonce"),
        _line(package, "package"),
    )
    return sign(private_key, "".join(f"{line}\n" for line in lines).encode("utf-8"))


class AppPayParams(TypedDict):
    appid: str
    partnerid: str
    prepayid: str
    package: str
    noncestr: str
    timestamp: str
    sign: str


def app_pay_params(
    private_key: RSAPrivateKey,
    appid: str,
    mchid: str,
    prepay_id: str,
    *,
    timestamp: int | str | None = None,
    nonce: str | None = None,
) -> AppPayParams:
    """Parameters for the App SDK's PayReq: the sign covers `appid\ntimestamp\nnoncestr\nprepayid\n`, the
    prepay_id bare (not `prepay_id=...` as for JSAPI), and `package` is the fixed `Sign=WXPay` (WECHATPAY_V3 §3.4)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce_str() if nonce is None else nonce
    return AppPayParams(appid=appid, partnerid=mchid, prepayid=prepay_id, package="Sign=WXPay", noncestr=nonce,
                        timestamp=ts, sign=pay_sign(private_key, appid, ts, nonce, prepay_id))


def jsapi_pay_params(
    private_key: RSAPrivateKey,
    appid: str,
    prepay_id: str,
    *,
    timestamp: int | str | None = None,
    nonce: str | None = None,
) -> JsapiPayParams:
    """Parameters for `WeixinJSBridge getBrandWCPayRequest` / `wx.requestPayment`."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce_str() if nonce is None else nonce
    package = f"prepay_id={prepay_id}"
    return JsapiPayParams(
        appId=appid,
        timeStamp=ts,
        nonceStr=nonce,
        package=package,
        signType="RSA",
        paySign=pay_sign(private_key, appid, ts, nonce, package),
    )
