"""WeChat simulator platform certificates and key modes: `GET /v3/certificates` decrypted and trusted by payflow's
own client side (`parse_download`, `KeyRing`, `CertificateKeeper`), answers and notifications signed by mode,
a rotation with overlap, expiry, and the switch from certificates to the public key (WECHATPAY_V3 §2.3, §10.6;
docs/wechatpay-products.md P.5, P.6)."""

from __future__ import annotations

import datetime as dt
import pathlib
import re
from collections.abc import Mapping, Sequence

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from payflow.wechat import crypto
from payflow.wechat.certificates import CertificateKeeper, KeyRing, PlatformCertificate, parse_download
from simulator.wechat import CERTIFICATES, NOTIFIER, SIGNER
from tests.simulator.conftest import T0, Answer, MakeWechat, Merchant, Receiver

DAY = 24 * 3600
SERIAL = re.compile(r"[1-7][0-9A-F]{39}")
NO_SERIAL: Mapping[str, str | None] = {"Wechatpay-Serial": None}


def _ring(wechat: Merchant, certificates: Sequence[PlatformCertificate] = (), *, public: bool = True) -> KeyRing:
    keys = {wechat.keys.pub_key_id: wechat.keys.platform_public_key} if public else {}
    return KeyRing(keys, certificates, now=lambda: wechat.clock.now().timestamp())


def _verify(wechat: Merchant, answer: Answer | tuple[Mapping[str, str], bytes], ring: KeyRing) -> str:
    headers, body = (answer.headers, answer.body) if isinstance(answer, Answer) else answer
    crypto.verify_signed_message(headers, body, ring, now=wechat.clock.now().timestamp())
    return headers["Wechatpay-Serial"]


async def _download(wechat: Merchant, query: str = "", **headers: str | None) -> Answer:
    return await wechat.request("GET", f"/v3/certificates{query}", headers=headers or NO_SERIAL, verify=False)


async def _serial_of_answer(wechat: Merchant, ring: KeyRing, serial: str | None) -> str:
    headers = {"Wechatpay-Serial": serial}
    answer = await wechat.request("GET", f"/v3/pay/transactions/out-trade-no/K20261126000001?mchid={wechat.keys.mchid}",
                                  headers=headers, verify=False)
    assert answer.status == 404  # an error answer is signed too, with the same key (§2.1)
    return _verify(wechat, answer, ring)


async def test_the_certificates_are_listed_encrypted_with_the_apiv3_key_and_signed(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(key_mode="certificates")
    answer = await _download(wechat)
    assert answer.status == 200
    [entry] = answer.json()["data"]
    assert list(entry) == ["serial_no", "effective_time", "expire_time", "encrypt_certificate"]
    assert SERIAL.fullmatch(entry["serial_no"])
    assert (entry["effective_time"], entry["expire_time"]) == ("2026-11-26T12:00:00+08:00",
                                                               "2031-11-25T12:00:00+08:00")  # 5 × 365 days
    sealed = entry["encrypt_certificate"]
    assert list(sealed) == ["algorithm", "nonce", "associated_data", "ciphertext"]
    assert (sealed["algorithm"], sealed["associated_data"], len(sealed["nonce"])) == (
        "AEAD_AES_256_GCM", "certificate", 12)
    pem = crypto.aead_decrypt(wechat.keys.apiv3_key, sealed["nonce"], "certificate", sealed["ciphertext"])
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Tenpay.com sign"
    assert f"{cert.serial_number:040X}" == entry["serial_no"]
    assert pem == wechat.app[CERTIFICATES].all()[0].pem

    # payflow's client side: decrypt, check each against its listing, then trust the answer's signature.
    [downloaded] = parse_download(answer.body, [wechat.keys.apiv3_key])
    assert downloaded.serial == entry["serial_no"]
    assert _verify(wechat, answer, _ring(wechat, [downloaded], public=False)) == entry["serial_no"]


async def test_payflows_certificate_keeper_downloads_and_trusts_the_simulators_list(
    make_wechat: MakeWechat, tmp_path: pathlib.Path
) -> None:
    wechat = await make_wechat(key_mode="certificates")
    ring = _ring(wechat, public=False)

    async def download() -> tuple[Mapping[str, str], bytes]:
        answer = await _download(wechat)
        return answer.headers, answer.body

    keeper = CertificateKeeper(ring, download, [wechat.keys.apiv3_key], path=tmp_path / "certs.json")
    assert await keeper.refresh()
    assert [c.serial for c in ring.certificates] == [wechat.app[CERTIFICATES].all()[0].serial]
    assert (tmp_path / "certs.json").exists()
    # ...and every answer from now on verifies against that ring.
    assert await _serial_of_answer(wechat, ring, None) == ring.certificates[0].serial


async def test_a_merchant_that_only_ever_had_the_public_key_gets_system_error(wechat: Merchant) -> None:
    answer = await _download(wechat)
    assert (answer.status, answer.json()["code"]) == (500, "SYSTEM_ERROR")
    assert _verify(wechat, answer, _ring(wechat)) == wechat.keys.pub_key_id


async def test_only_rsa_certificates_are_issued(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(key_mode="certificates")
    assert (await _download(wechat, "?algorithm_type=RSA")).status == 200  # the Java SDK asks this way
    refused = await _download(wechat, "?algorithm_type=SM2")
    assert (refused.status, refused.json()["detail"]["field"]) == (400, "algorithm_type")


@pytest.mark.parametrize(
    ("mode", "named", "signed_by"),
    [
        ("pubkey", "pubkey", "pubkey"), ("pubkey", None, "pubkey"),
        ("certificates", "pubkey", "certificate"), ("certificates", "certificate", "certificate"),
        ("certificates", None, "certificate"),
        ("both", "pubkey", "pubkey"), ("both", "certificate", "certificate"), ("both", None, "certificate"),
    ],
)
async def test_answers_are_signed_by_the_key_mode_and_in_both_by_the_serial_the_request_names(
    make_wechat: MakeWechat, mode: str, named: str | None, signed_by: str
) -> None:
    wechat = await make_wechat(key_mode=mode)
    if mode == "pubkey":
        wechat.app[CERTIFICATES].issue(wechat.clock.now())  # as a merchant that switched away from them has
    cert = wechat.app[CERTIFICATES].all()[0]
    loaded = parse_download((await _download(wechat)).body, [wechat.keys.apiv3_key])
    serial = {"pubkey": wechat.keys.pub_key_id, "certificate": cert.serial, None: None}[named]
    expected = wechat.keys.pub_key_id if signed_by == "pubkey" else cert.serial
    assert await _serial_of_answer(wechat, _ring(wechat, loaded), serial) == expected


async def test_a_serial_that_names_no_key_of_the_merchant_is_invalid_request(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(key_mode="certificates")
    answer = await wechat.request("GET", f"/v3/pay/transactions/out-trade-no/K1?mchid={wechat.keys.mchid}",
                                  headers={"Wechatpay-Serial": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"},
                                  verify=False)
    assert (answer.status, answer.json()["code"]) == (400, "INVALID_REQUEST")


async def _notified_serials(wechat: Merchant, receiver: Receiver, count: int) -> list[str]:
    for n in range(count):
        no = f"W2026112600{n:04d}"
        body = wechat.order(no, notify_url=receiver.url)
        assert (await wechat.request("POST", "/v3/pay/transactions/jsapi", body, verify=False)).status == 200
        await wechat.pay(no)
    receiver.posts.clear()
    assert await wechat.app[NOTIFIER].deliver_due(wechat.clock.now()) == count
    ring = _ring(wechat, parse_download((await _download(wechat)).body, [wechat.keys.apiv3_key]))
    return [_verify(wechat, (post.headers, post.body), ring) for post in receiver.posts]


async def test_notifications_are_signed_by_the_key_mode(make_wechat: MakeWechat, receiver: Receiver) -> None:
    wechat = await make_wechat(key_mode="certificates")
    assert set(await _notified_serials(wechat, receiver, 3)) == {wechat.app[CERTIFICATES].all()[0].serial}


async def test_in_both_modes_notifications_use_either_key_from_a_seeded_stream(
    make_wechat: MakeWechat, receiver: Receiver
) -> None:
    first = await make_wechat(key_mode="both", seed=7)
    serials = await _notified_serials(first, receiver, 12)
    assert set(serials) == {first.keys.pub_key_id, first.app[CERTIFICATES].all()[0].serial}
    again = await make_wechat(key_mode="both", seed=7)
    assert await _notified_serials(again, receiver, 12) == serials  # same seed, same keys, same choices
    only_public = await make_wechat(key_mode="both", pubkey_share=1.0)
    assert set(await _notified_serials(only_public, receiver, 4)) == {only_public.keys.pub_key_id}


async def test_a_rotation_lists_the_successor_first_and_signs_with_it_after_the_overlap(
    make_wechat: MakeWechat
) -> None:
    wechat = await make_wechat(key_mode="certificates", certificate_validity=dt.timedelta(days=10))
    old = wechat.app[CERTIFICATES].all()[0]
    ring = _ring(wechat, public=False)

    async def download() -> tuple[Mapping[str, str], bytes]:
        answer = await _download(wechat)
        return answer.headers, answer.body

    keeper = CertificateKeeper(ring, download, [wechat.keys.apiv3_key], path=None)
    assert await keeper.refresh()

    wechat.clock.advance(8 * DAY)  # WeChat generates the successor before the old one expires
    status, new = await wechat.control("POST", "/sim/v1/certificates/rotate", {"overlap": 3600})
    assert status == 201 and SERIAL.fullmatch(new["serial_no"]) and new["serial_no"] != old.serial
    assert (new["effective_time"], new["listed"], new["current"]) == ("2026-12-04T13:00:00+08:00", True, False)
    listed = (await _download(wechat)).json()["data"]
    assert [entry["serial_no"] for entry in listed] == [new["serial_no"], old.serial]
    assert await keeper.refresh()  # the successor is kept, usable once its window opens
    assert await _serial_of_answer(wechat, ring, None) == old.serial  # still the old one during the overlap

    wechat.clock.advance(3600)
    assert await _serial_of_answer(wechat, ring, None) == new["serial_no"]
    assert [entry["serial_no"] for entry in (await _download(wechat)).json()["data"]] == [new["serial_no"],
                                                                                        old.serial]
    wechat.clock.advance(2 * DAY)  # the old one expires and is no longer listed
    assert [entry["serial_no"] for entry in (await _download(wechat)).json()["data"]] == [new["serial_no"]]
    assert await _serial_of_answer(wechat, ring, None) == new["serial_no"]


async def test_a_client_that_missed_the_rotation_learns_the_new_serial_by_downloading(
    make_wechat: MakeWechat
) -> None:
    wechat = await make_wechat(key_mode="certificates")
    stale = _ring(wechat, parse_download((await _download(wechat)).body, [wechat.keys.apiv3_key]), public=False)
    await wechat.control("POST", "/sim/v1/certificates/rotate", {"overlap": 0})
    answer = await wechat.request("GET", f"/v3/pay/transactions/out-trade-no/K1?mchid={wechat.keys.mchid}",
                                  headers=NO_SERIAL, verify=False)
    with pytest.raises(crypto.SignatureInvalid, match="unknown Wechatpay-Serial"):
        _verify(wechat, answer, stale)
    assert stale.wanted == {answer.headers["Wechatpay-Serial"]}  # what makes payflow's keeper download
    stale.replace(parse_download((await _download(wechat)).body, [wechat.keys.apiv3_key]))
    assert _verify(wechat, answer, stale) == wechat.app[CERTIFICATES].all()[-1].serial


async def test_an_unrotated_certificate_expires_and_answers_fail_verification(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(key_mode="certificates", certificate_validity=dt.timedelta(days=1))
    ring = _ring(wechat, parse_download((await _download(wechat)).body, [wechat.keys.apiv3_key]), public=False)
    wechat.clock.advance(DAY + 1)
    assert (await _download(wechat)).json()["data"] == []
    answer = await wechat.request("GET", f"/v3/pay/transactions/out-trade-no/K1?mchid={wechat.keys.mchid}",
                                  headers=NO_SERIAL, verify=False)
    with pytest.raises(crypto.SignatureInvalid):
        _verify(wechat, answer, ring)  # signed with the expired certificate, which the ring no longer offers


async def test_the_switch_from_certificates_to_the_public_key(make_wechat: MakeWechat, receiver: Receiver) -> None:
    wechat = await make_wechat(key_mode="certificates")
    cert = wechat.app[CERTIFICATES].all()[0]
    ring = _ring(wechat, parse_download((await _download(wechat)).body, [wechat.keys.apiv3_key]))
    assert await _serial_of_answer(wechat, ring, wechat.keys.pub_key_id) == cert.serial

    status, view = await wechat.control("POST", "/sim/v1/signing", {"mode": "both", "pubkey_share": 0.0})
    assert status == 200 and (view["mode"], view["pubkey_share"]) == ("both", 0.0)
    assert await _serial_of_answer(wechat, ring, wechat.keys.pub_key_id) == wechat.keys.pub_key_id
    assert await _serial_of_answer(wechat, ring, cert.serial) == cert.serial

    status, view = await wechat.control("POST", "/sim/v1/signing", {"mode": "pubkey"})
    assert status == 200 and view["mode"] == "pubkey" and view["certificate_serial"] == cert.serial
    assert await _serial_of_answer(wechat, ring, cert.serial) == wechat.keys.pub_key_id
    assert await _serial_of_answer(wechat, ring, None) == wechat.keys.pub_key_id
    assert set(await _notified_serials(wechat, receiver, 2)) == {wechat.keys.pub_key_id}
    # A merchant that switched still finds its certificates listed until they expire (UNVERIFIED, P.6).
    assert [e["serial_no"] for e in (await _download(wechat)).json()["data"]] == [cert.serial]


async def test_switching_a_public_key_merchant_to_certificates_issues_the_first_one(wechat: Merchant) -> None:
    assert not wechat.app[CERTIFICATES]
    status, view = await wechat.control("POST", "/sim/v1/signing", {"mode": "certificates"})
    assert status == 200 and SERIAL.fullmatch(view["certificate_serial"])
    [cert] = view["certificates"]
    assert (cert["serial_no"], cert["current"], cert["listed"]) == (view["certificate_serial"], True, True)
    assert cert["effective_time"] == "2026-11-26T12:00:00+08:00" and cert["issued_at"] == cert["effective_time"]
    assert x509.load_pem_x509_certificate(cert["pem"].encode()).serial_number == int(cert["serial_no"], 16)
    assert wechat.app[SIGNER].certificates is wechat.app[CERTIFICATES]
    status, listed = await wechat.control("GET", "/sim/v1/certificates")
    assert status == 200 and listed["certificates"] == view["certificates"]


@pytest.mark.parametrize(("path", "body"), [
    ("/sim/v1/signing", {"mode": "platform"}), ("/sim/v1/signing", {}),
    ("/sim/v1/signing", {"mode": "both", "pubkey_share": 1.5}),
    ("/sim/v1/signing", {"mode": "both", "pubkey_share": True}),
    ("/sim/v1/certificates/rotate", {"overlap": -1}), ("/sim/v1/certificates/rotate", {"overlap": "1d"}),
    ("/sim/v1/certificates/rotate", {"validity": 0}),
])
async def test_bad_control_input_is_400(wechat: Merchant, path: str, body: dict[str, object]) -> None:
    status, error = await wechat.control("POST", path, body)
    assert (status, error["error"]["code"]) == (400, "INVALID_INPUT")


async def test_the_first_certificate_starts_on_the_simulators_clock(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(key_mode="both")
    [cert] = wechat.app[CERTIFICATES].all()
    assert (cert.not_before, cert.not_after) == (T0, T0 + dt.timedelta(days=5 * 365))
    status, view = await wechat.control("GET", "/sim/v1/signing")
    assert status == 200
    assert (view["mode"], view["pub_key_id"], view["certificate_serial"]) == ("both", wechat.keys.pub_key_id,
                                                                              cert.serial)
