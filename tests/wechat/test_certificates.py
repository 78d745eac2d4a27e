"""Platform certificates: the download decrypted and checked, the ring by serial and validity window, the
keeper's refresh (scheduled, on an unknown serial at most once a minute) and its saved set."""

from __future__ import annotations

import datetime as dt
import json
import pathlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from payflow.wechat import crypto
from payflow.wechat.certificates import (
    UNKNOWN_SERIAL_REFRESH,
    CertificateError,
    CertificateKeeper,
    KeyRing,
    PlatformCertificate,
    load_certificate,
    parse_download,
)

APIV3 = "0123456789abcdef0123456789abcdef"
NOW = dt.datetime(2026, 11, 26, 4, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


class Issued:
    """A platform certificate and the private key WeChat signs with under its serial."""

    def __init__(self, serial: int, not_before: dt.datetime, not_after: dt.datetime) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com sign")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(serial).not_valid_before(not_before).not_valid_after(not_after)
                .sign(self.key, hashes.SHA256()))
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.serial = f"{serial:X}"

    def entry(self, *, listed_as: str | None = None, key: str = APIV3) -> dict[str, object]:
        return {"serial_no": listed_as or self.serial, "effective_time": "", "expire_time": "",
                "encrypt_certificate": {"algorithm": "AEAD_AES_256_GCM", "nonce": "61f9c719728a",
                                        "associated_data": "certificate",
                                        "ciphertext": crypto.aead_encrypt(key, "61f9c719728a", "certificate",
                                                                          self.pem)}}


@pytest.fixture(scope="module")
def old() -> Issued:
    return Issued(0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1, NOW - 300 * DAY, NOW + 5 * DAY)


@pytest.fixture(scope="module")
def new() -> Issued:
    return Issued(0x7132D72A03E93CDDF8C03BBD1F37EEDF4A2C1B11, NOW + DAY, NOW + 800 * DAY)  # listed a day early


def _answer(signer: Issued, *certs: Issued, at: dt.datetime = NOW) -> tuple[dict[str, str], bytes]:
    body = json.dumps({"data": [c.entry() for c in certs]}).encode()
    return crypto.sign_response_headers(signer.key, signer.serial, body, timestamp=int(at.timestamp())), body


def _clock(at: dt.datetime = NOW) -> list[float]:
    return [at.timestamp()]


def test_the_download_is_decrypted_and_each_certificate_checked_against_its_listing(old: Issued, new: Issued) -> None:
    certs = parse_download(json.dumps({"data": [old.entry(), new.entry()]}).encode(), [APIV3])
    assert [c.serial for c in certs] == [old.serial, new.serial]
    assert certs[0].not_after == NOW + 5 * DAY
    with pytest.raises(CertificateError, match="listed as"):
        parse_download({"data": [old.entry(listed_as=new.serial)]}, [APIV3])
    with pytest.raises(CertificateError, match="cannot decrypt"):
        parse_download({"data": [old.entry(key="f" * 32)]}, [APIV3])
    assert parse_download({"data": [old.entry(key="f" * 32)]}, [APIV3, "f" * 32])  # the previous APIv3 key
    for bad in (b"not json", b"{}", b'{"data": {}}', b'{"data": []}', b'{"data": [{"serial_no": "1"}]}'):
        with pytest.raises(CertificateError):
            parse_download(bad, [APIV3])


def test_the_ring_answers_a_certificate_only_inside_its_window(old: Issued, new: Issued) -> None:
    pubkey = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    now = _clock()
    certs = [load_certificate(old.pem), load_certificate(new.pem)]
    ring = KeyRing({"PUB_KEY_ID_0114": pubkey}, certs, now=lambda: now[0])
    assert ring["PUB_KEY_ID_0114"] is pubkey
    assert ring.get(old.serial) is not None and ring.get(old.serial.lower()) is not None
    assert ring.get(new.serial) is None and new.serial in ring.wanted  # not valid before tomorrow
    assert set(ring) == {"PUB_KEY_ID_0114", old.serial}
    now[0] = (NOW + 6 * DAY).timestamp()  # the old one expired, the new one took over
    assert ring.get(old.serial) is None and ring.get(new.serial) is not None
    assert ring.get("PUB_KEY_ID_9999") is None and "PUB_KEY_ID_9999" in ring.wanted
    only_certs = KeyRing(certificates=certs, now=lambda: now[0])
    assert only_certs.signing_serial() == new.serial and ring.signing_serial() == "PUB_KEY_ID_0114"


async def test_a_refresh_replaces_the_set_saves_it_and_a_restart_loads_it(
    old: Issued, new: Issued, tmp_path: pathlib.Path
) -> None:
    now, monotonic = _clock(), [0.0]
    answers = [_answer(old, old, new)]

    async def download() -> tuple[dict[str, str], bytes]:
        return answers.pop(0)

    path = tmp_path / "wechat-certificates.json"
    ring = KeyRing(now=lambda: now[0])
    keeper = CertificateKeeper(ring, download, [APIV3], path=path, monotonic=lambda: monotonic[0])
    assert keeper.load() == 0
    assert await keeper.refresh() is True
    assert {c.serial for c in ring.certificates} == {old.serial, new.serial} and path.exists()

    async def unreachable() -> tuple[dict[str, str], bytes]:
        raise OSError("WeChat unreachable")

    restarted = KeyRing(now=lambda: now[0])
    again = CertificateKeeper(restarted, unreachable, [APIV3], path=path, monotonic=lambda: monotonic[0])
    assert again.load() == 2  # a restart while WeChat is unreachable still verifies
    assert await again.refresh() is False and len(restarted.certificates) == 2  # and keeps what it had


async def test_a_list_not_signed_by_a_trusted_or_listed_key_is_refused(old: Issued, new: Issued) -> None:
    now = _clock()
    stranger = Issued(0xABCDEF, NOW - DAY, NOW + DAY)
    forged = [_answer(stranger, old)]  # signed by a key neither trusted nor in the list

    async def download() -> tuple[dict[str, str], bytes]:
        return forged.pop(0)

    ring = KeyRing(now=lambda: now[0])
    keeper = CertificateKeeper(ring, download, [APIV3], path=None)
    assert await keeper.refresh() is False and ring.certificates == []


async def test_an_unknown_serial_refreshes_at_most_once_a_minute(old: Issued, new: Issued) -> None:
    now, monotonic = _clock(), [0.0]
    downloads: list[float] = []

    async def download() -> tuple[dict[str, str], bytes]:
        downloads.append(monotonic[0])
        return _answer(old, old)

    ring = KeyRing(now=lambda: now[0])
    keeper = CertificateKeeper(ring, download, [APIV3], path=None, monotonic=lambda: monotonic[0])
    assert await keeper.refresh_if_wanted() is False  # nothing was missed
    assert ring.get(new.serial) is None  # a message named a serial we do not know
    assert await keeper.refresh_if_wanted() is True and downloads == [0.0]
    assert ring.get(new.serial) is None  # still not in WeChat's list (a forger's serial, say)
    monotonic[0] = UNKNOWN_SERIAL_REFRESH - 1
    assert await keeper.refresh_if_wanted() is False and downloads == [0.0]
    monotonic[0] = UNKNOWN_SERIAL_REFRESH
    assert await keeper.refresh_if_wanted() is True and downloads == [0.0, UNKNOWN_SERIAL_REFRESH]


def test_a_saved_set_that_cannot_be_read_is_ignored(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "wechat-certificates.json"
    path.write_text("{not json")
    assert CertificateKeeper(KeyRing(), _never, [APIV3], path=path).load() == 0


async def _never() -> tuple[dict[str, str], bytes]:
    raise AssertionError("not downloaded")


def test_a_certificate_is_its_own_serial(old: Issued) -> None:
    cert: PlatformCertificate = load_certificate(old.pem, serial=old.serial.lower())
    assert cert.serial == old.serial and cert.valid_at(NOW)
    with pytest.raises(CertificateError):
        load_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
