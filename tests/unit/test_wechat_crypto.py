"""APIv3 crypto: the published vectors of WECHATPAY_V3.md §11, round trips and failure paths."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from multidict import CIMultiDict, CIMultiDictProxy

from payflow.wechat import crypto
from payflow.wechat.crypto import (
    CryptoError,
    DecryptionFailed,
    SignatureInvalid,
    TimestampSkewed,
)

VECTORS = Path(__file__).parent / "vectors"

# §11.1 official request-signature vectors
MCHID = "1900007291"
MERCHANT_SERIAL = "408B07E79B8269FEC3D5D3E6AB8ED163A6A380DB"
SIGN_TS = 1554208460
SIGN_NONCE = "593BEC0C930BF1AFEB40B4A08C8FB242"
JSAPI_BODY = (
    '{"appid":"wxd678efh567hg6787","mchid":"1900007291","description":"Image形象店-深圳腾大-QQ公仔",'
    '"out_trade_no":"1217752501201407033233368018","notify_url":"https://www.weixin.qq.com/wxpay/pay.php",'
    '"amount":{"total":100,"currency":"CNY"},"payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}}'
)
V1_SIGNATURE = (
    "jnks4dlrPw3ZX+ozVvSK39oa0t7OMBsg83BHAwd8BRdUFiVaQNTLTvci+wURgP1OQBbKYhFGvt7iqYpDSTQkp7Uq1sltaQKy"
    "ncCyrA1g88m5bsKERQfPyT0ahSwKTYJ1CAn9QiJuSJRq1QsQs07eehbU/k9BCS51jTyc1Jpsi2H77HF9f/BnjXAOP3/sPObg6V5E"
    "e4EzwLox684hhuMuIwHo7D8KFk3LIHOKDcNI4It1aCXydFWNpNK+SG86VUDe5kwoDpw4Ulqfu9z8OFDGbDs9TCxEv8iqQzbpxOlE"
    "VoOe2kalSYM5kApQb3nZcxdUtoE0liJGW3RGUNE0t4v01A=="
)
V2_SIGNATURE = (
    "Lc9VXxmeonkdV8Xk9tmigQFLhl0vRWTerdmoRu01aAnYwIrD/5nsSwE1WlmZGLRlAFTNQ3QsMa0+VRDlJp1Wp5p0nO8EK68b5sJB"
    "bjouxaFciIfq1zfDWWz+jqhcMoKXI1A6dPm1AW7D4d30WsMTNzp6g23OXakIsh9LO3lUmwvTuE0BY8ncf6tNGk4wKmvXwERd/Zpo"
    "QY3MAVKz+Nakwc+2XBmzT66KcUehU5kr4IvGa/lEU5RZb/q00zP9VLdBhC/jQSX3X1UcJLCtEc4gTmib4tnmAT+bHF/e17ZAuxDN"
    "cx6rqT8gNEXqaJGG+1OflMSTU2tpyG65G4dMKdFcoA=="
)

# §11.2 official paySign vectors
PAY_APPID = "wx2421b1c4370ec43b"
PREPAY_ID = "wx201410272009395522657a690389285100"
JSAPI_PAY_SIGN = (
    "mI35pfNEQV6777ke/1T+LJLQDNTm7yeoUJH+j/adPGhmCCi0PbgkvYQTRcXH0uibcLVtvFLdGLpmoYO9FV6lBBsTAjuhh5YOvQi0"
    "e2g3e0yytitiNET9FEuqM0pjnKfRW4K6LIZDdbWJv9KhZUx3DrJa5TL7OJ7VdADVivxVySIlPVKjGwuCXzuXSJes0UcILgWQUMyh"
    "a5/3nYofuHtS7r+KYyMuxD+oJ9VM1Qdxk4UIG59CP5Y3wtYIFybyF3bdu1caHTRRX+DLyMXyYA/IrTmiW01c4RPjpHBX5Dk1sZyY"
    "1zVsWNsvMHr2e1NTWtBxKJ+qk5N61J7caYoepHFaxw=="
)
APP_PAY_SIGN = (
    "gXx9KhTP6IooKV1SuG3OCGlBIgZbKtubCZvnau6khw1iffvNT28IzLbKmztq2xA/RCNbZa1XOsoiuVmAEeTZQicWfhv4P+O4oBRI"
    "rx0X9f3cnWFkMBU9alTWs0nyQ1N9fcILOTe0f4kxOhVh+/Xhn5hOiUK7Sz3XA1mcpa3R2NCWf/e+0ow/RDf15iTymOHgDrEkT/ge"
    "dg/3E0iXfDX3mFicSZhrHESZDOTXcl9RzELREBUFznd/o2NQM99WcL86m23HY0cTy+QGWU4QDmNrbQ9ihmLW71qPb0Cx/d7EQvw/"
    "Kyx0A6s64ZQp3hHdcmiRcLnjVXrKCk7LShaCK+lS3Q=="
)

# §11.3 public-key-mode response
PUB_KEY_ID = "PUB_KEY_ID_0000000000000024101100397200000006"
RESP_TS = 1722850421
RESP_BODY = b'{"code_url":"weixin://wxpay/bizpayurl?pr=JyC91EIz1"}'
RESP_HEADERS = {
    "Wechatpay-Timestamp": str(RESP_TS),
    "Wechatpay-Nonce": "d824f2e086d3c1df967785d13fcd22ef",
    "Wechatpay-Serial": PUB_KEY_ID,
    "Wechatpay-Signature": (
        "mfI1CPqvBrgcXfgXMFjdNIhBf27ACE2YyeWsWV9ZI7T7RU0vHvbQpu9Z32ogzc+k8ZC5n3kz7h70eWKjgqNdKQF0eRp8mVKl"
        "mfzMLBVHbssB9jEZEDXThOX1XFqX7s7ymia1hoHQxQagPGzkdWxtlZPZ4ZPvr1RiqkgAu6Is8MZgXXrRoBKqjmSdrP1N7uxzJ/cj"
        "fSiis9FiLjuADoqmQ1P7p2N876YPAol7Rn0+GswwAwxldbdLrmVSjfytfSBJFqTMHn4itojgxSWWN1byuckQt8hSTEv/Lg97Qoe"
        "GniYP17T80pJeQyL3b+295FPHSO2AtvCgyIbKMZ0BALilAA=="
    ),
}

# §11.4 full notification (wechatpay-go core/notify/notify_test.go)
NOTIFY_TS = 1624523846
NOTIFY_SERIAL = "D7CE59D1F522D701"
NOTIFY_HEADERS = {
    "Wechatpay-Timestamp": str(NOTIFY_TS),
    "Wechatpay-Nonce": "EcZ9Cmy4Xyx1i6RlJQzLcCyEqDa26NBz",
    "Wechatpay-Serial": NOTIFY_SERIAL,
    "Wechatpay-Signature": (
        "tJHIiIS9eB2hAYstmAmbbD3ZE5LiIm/Ug5tuL4fC0YOFRWIHV39UFIZXC0e9Wl6lBu6sKvkqDkzpqzBsVHyXFlbYZTOQrVdG"
        "4b6LfTnK4mikv9++ixJMd3vTf2yCqvBkh98zs3Ds5zsYQakzbcwhmw4fMJs4nPLws28H0UW9FjDR//rxELLwXvV1VEA1IBLX70xp"
        "tjL8hrfUjEE8kkry6yNJTHZRU8CAc7qHli2Ng1V1qb9ARbK8A3ThmFmPQvRGrapI/jS2laKKgYUmfdEdkNO6B2Cke5e8VTxY406A"
        "rAmQ90GAihDwIcb16TQMnzCMBoutnwZKNiKRACrFmtxw2Q=="
    ),
}
NOTIFY_CIPHERTEXT = (
    "YDS3lKPaC4Y52Gf3uhft5qUBlIa8b428AWTtTauHQfQrRw+X1WpiuHIDy0vo1Vd6VEq67aVyqPdDYMkRVSDaZL3iZttevRMOoPKM"
    "ifozg6XPWjIZumks/GpT48lI4NizyeaqLBokNebthah3o1H76qSlO9NkDjp9bzmKLEYYH9TEklFUpsvPqOTOcgSLgh21YJXYR7dE"
    "BXFgRLiNIKRgO5JdXh1hccRUAlyVWxE54PXpnQ=="
)
NOTIFY_BODY = (
    '{"id":"3119dfba-e649-5eec-ab1e-3412bc4d2e17","create_time":"2021-06-24T16:37:26+08:00",'
    '"resource_type":"encrypt-resource","event_type":"PAYSCORE.USER_OPEN_SERVICE","summary":"签约成功",'
    '"resource":{"original_type":"payscore","algorithm":"AEAD_AES_256_GCM","ciphertext":"'
    + NOTIFY_CIPHERTEXT
    + '","associated_data":"payscore","nonce":"Kj7QIyUiYx1q"}}'
).encode("utf-8")
NOTIFY_PLAINTEXT = (
    b'{"mchid":"1234567890","appid":"054aa7d7a2a54ab5898df65bd96f001c",'
    b'"create_time":"2020-06-30T12:12:00+08:00","out_contract_code":"21640bdbd08e473e828f3206a2741c6e"}'
)

# §11.5 / §11.6 AEAD vectors (wechatpay-java; 32-byte key)
JAVA_APIV3_KEY = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"

# §11.7 RSA vector (wechatpay-go utils/sign_test.go)
GO_SOURCE_SIGNATURE = (
    "BKyAfU4iMCuvXMXS0Wzam3V/cnxZ+JaqigPM5OhljS2iOT95OO6Fsuml2JkFANJU9K6q9bLlDhPXuoVz+pp4hAm6pHU4ld815U4j"
    "sKu1RkyaII+1CYBUYC8TK0XtJ8FwUXXz8vZHh58rrAVN1XwNyvD1vfpxrMT4SL536GLwvpUHlCqIMzoZUguLli/K8V29QiOhuH6I"
    "EqLNJn8e9b3nwNcQ7be3CzYGpDAKBfDGPCqCv8Rw5zndhlffk2FEA70G4hvMwe51qMN/RAJbknXG23bSlObuTCN7Ndj1aJGH6/L+"
    "hdwfLpUtJm4QYVazzW7DFD27EpSQEqA8bX9+8m1rLg=="
)

APIV3_KEY = "0123456789abcdefghijklmnopqrstuv"  # 32 bytes, for round trips


@pytest.fixture(scope="module")
def merchant_key() -> RSAPrivateKey:
    return crypto.load_private_key(VECTORS / "official_merchant_key.pem")


@pytest.fixture(scope="module")
def pubkey_mode_key() -> RSAPublicKey:
    return crypto.load_public_key(VECTORS / "pubkey_mode_public_key.pem")


@pytest.fixture(scope="module")
def generated() -> tuple[RSAPrivateKey, RSAPublicKey]:
    private_pem, public_pem = crypto.generate_key_pair()
    return crypto.load_private_key(private_pem), crypto.load_public_key(public_pem)


@pytest.fixture(scope="module")
def other_generated() -> tuple[RSAPrivateKey, RSAPublicKey]:
    private_pem, public_pem = crypto.generate_key_pair()
    return crypto.load_private_key(private_pem), crypto.load_public_key(public_pem)


def _flip_last_byte(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# -- §11.1 request signatures -------------------------------------------------------------------


def test_v1_post_request_signature(merchant_key: RSAPrivateKey) -> None:
    message = crypto.build_request_message(
        "POST", "/v3/pay/transactions/jsapi", SIGN_TS, SIGN_NONCE, JSAPI_BODY
    )
    assert message == (
        f"POST\n/v3/pay/transactions/jsapi\n{SIGN_TS}\n{SIGN_NONCE}\n{JSAPI_BODY}\n".encode()
    )
    assert crypto.sign(merchant_key, message) == V1_SIGNATURE


def test_v2_get_request_signature_signs_empty_body_line(merchant_key: RSAPrivateKey) -> None:
    message = crypto.build_request_message(
        "GET", "/v3/refund/domestic/refunds/123123123123", SIGN_TS, SIGN_NONCE, b""
    )
    assert message.endswith(f"{SIGN_NONCE}\n\n".encode())
    assert crypto.sign(merchant_key, message) == V2_SIGNATURE


def test_authorization_header_reproduces_official_sample(merchant_key: RSAPrivateKey) -> None:
    header = crypto.authorization_header(
        MCHID,
        MERCHANT_SERIAL,
        merchant_key,
        "POST",
        "/v3/pay/transactions/jsapi",
        JSAPI_BODY.encode(),
        timestamp=SIGN_TS,
        nonce=SIGN_NONCE,
    )
    assert header == (
        f'WECHATPAY2-SHA256-RSA2048 mchid="{MCHID}",nonce_str="{SIGN_NONCE}",'
        f'signature="{V1_SIGNATURE}",timestamp="{SIGN_TS}",serial_no="{MERCHANT_SERIAL}"'
    )


def test_signing_upper_cases_the_method(merchant_key: RSAPrivateKey) -> None:
    lower = crypto.build_request_message(
        "get", "/v3/refund/domestic/refunds/123123123123", SIGN_TS, SIGN_NONCE, ""
    )
    assert lower.startswith(b"GET\n")
    assert crypto.sign(merchant_key, lower) == V2_SIGNATURE


def test_request_message_keeps_query_and_appends_newline_after_body() -> None:
    message = crypto.build_request_message(
        "GET", "/v3/pay/transactions/out-trade-no/X1?mchid=1900007291", "1554208460", "N", "a\n"
    )
    assert message == b"GET\n/v3/pay/transactions/out-trade-no/X1?mchid=1900007291\n1554208460\nN\na\n\n"


def test_request_message_body_str_and_bytes_agree() -> None:
    as_str = crypto.build_request_message("POST", "/p", 1, "N", JSAPI_BODY)
    as_bytes = crypto.build_request_message("POST", "/p", 1, "N", JSAPI_BODY.encode("utf-8"))
    assert as_str == as_bytes


@pytest.mark.parametrize(
    ("path", "nonce"),
    [
        ("https://api.mch.weixin.qq.com/v3/pay/transactions/jsapi", "N"),
        ("/v3/pay/transactions/jsapi", "N\nX"),
        ("/v3/pay\n/transactions", "N"),
    ],
)
def test_request_message_rejects_ambiguous_input(path: str, nonce: str) -> None:
    with pytest.raises(ValueError):
        crypto.build_request_message("POST", path, 1, nonce, b"")


# -- Authorization header round trip and parsing ------------------------------------------------


def test_authorization_header_round_trip_with_generated_key(
    generated: tuple[RSAPrivateKey, RSAPublicKey],
) -> None:
    private_key, public_key = generated
    body = b'{"mchid":"1900007291"}'
    path = "/v3/pay/transactions/out-trade-no/ORDER_1/close"
    header = crypto.authorization_header(MCHID, MERCHANT_SERIAL, private_key, "POST", path, body)

    params = crypto.parse_authorization_header(header)
    assert params["mchid"] == MCHID
    assert params["serial_no"] == MERCHANT_SERIAL
    assert re.fullmatch(r"[0-9A-Z]{32}", params["nonce_str"])
    assert re.fullmatch(r"[0-9]{10}", params["timestamp"])
    message = crypto.build_request_message(
        "POST", path, params["timestamp"], params["nonce_str"], body
    )
    crypto.verify(public_key, message, params["signature"])
    with pytest.raises(SignatureInvalid):
        crypto.verify(
            public_key,
            crypto.build_request_message("POST", path, params["timestamp"], params["nonce_str"], b"{}"),
            params["signature"],
        )


def test_parse_authorization_accepts_go_sdk_order_and_spaces() -> None:
    header = (
        f'WECHATPAY2-SHA256-RSA2048 mchid="{MCHID}", nonce_str="{SIGN_NONCE}", '
        f'timestamp="{SIGN_TS}", serial_no="{MERCHANT_SERIAL}", signature="{V1_SIGNATURE}"'
    )
    assert crypto.parse_authorization_header(header) == {
        "mchid": MCHID,
        "nonce_str": SIGN_NONCE,
        "signature": V1_SIGNATURE,
        "timestamp": str(SIGN_TS),
        "serial_no": MERCHANT_SERIAL,
    }


_GOOD_PAIRS = 'mchid="1",nonce_str="N",signature="U0lH",timestamp="1",serial_no="S"'


@pytest.mark.parametrize(
    "value",
    [
        "",
        _GOOD_PAIRS,
        "WECHATPAY2-SHA256-RSA2048",
        f"Bearer {_GOOD_PAIRS}",
        f"WECHATPAY2-SHA256-RSA1024 {_GOOD_PAIRS}",
        'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="N",signature="U0lH",timestamp="1"',
        f'WECHATPAY2-SHA256-RSA2048 {_GOOD_PAIRS},mchid="2"',
        f'WECHATPAY2-SHA256-RSA2048 {_GOOD_PAIRS},extra="x"',
        'WECHATPAY2-SHA256-RSA2048 mchid=1,nonce_str="N",signature="U0lH",timestamp="1",serial_no="S"',
        'WECHATPAY2-SHA256-RSA2048 mchid="",nonce_str="N",signature="U0lH",timestamp="1",serial_no="S"',
        f"WECHATPAY2-SHA256-RSA2048 {_GOOD_PAIRS};",
        f"WECHATPAY2-SHA256-RSA2048 {_GOOD_PAIRS},",
        'WECHATPAY2-SHA256-RSA2048 mchid="1" nonce_str="N",signature="U0lH",timestamp="1",serial_no="S"',
        'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="N\n",signature="U0lH",timestamp="1",serial_no="S"',
        'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="N",signature="U0lH",timestamp="1.5",serial_no="S"',
    ],
)
def test_parse_authorization_rejects_malformed(value: str) -> None:
    with pytest.raises(SignatureInvalid):
        crypto.parse_authorization_header(value)


def test_parse_authorization_accepts_the_good_baseline() -> None:
    # Keeps the malformed cases honest: they differ from this by exactly one defect.
    assert crypto.parse_authorization_header(f"WECHATPAY2-SHA256-RSA2048 {_GOOD_PAIRS}")["serial_no"] == "S"


def test_authorization_header_refuses_quote_in_field(merchant_key: RSAPrivateKey) -> None:
    with pytest.raises(ValueError):
        crypto.authorization_header(
            'bad"mchid', MERCHANT_SERIAL, merchant_key, "GET", "/v3/x", b"", timestamp=1, nonce="N"
        )


# -- §11.2 paySign ------------------------------------------------------------------------------


def test_jsapi_pay_params_official_vector(merchant_key: RSAPrivateKey) -> None:
    params = crypto.jsapi_pay_params(
        merchant_key, PAY_APPID, PREPAY_ID, timestamp=SIGN_TS, nonce=SIGN_NONCE
    )
    assert params == {
        "appId": PAY_APPID,
        "timeStamp": str(SIGN_TS),
        "nonceStr": SIGN_NONCE,
        "package": f"prepay_id={PREPAY_ID}",
        "signType": "RSA",
        "paySign": JSAPI_PAY_SIGN,
    }


def test_pay_sign_app_vector_signs_bare_prepay_id(merchant_key: RSAPrivateKey) -> None:
    assert crypto.pay_sign(merchant_key, PAY_APPID, str(SIGN_TS), SIGN_NONCE, PREPAY_ID) == APP_PAY_SIGN


def test_app_pay_params_match_the_official_vector(merchant_key: RSAPrivateKey) -> None:
    params = crypto.app_pay_params(merchant_key, PAY_APPID, "1900007291", PREPAY_ID, timestamp=SIGN_TS,
                                   nonce=SIGN_NONCE)
    assert params == {"appid": PAY_APPID, "partnerid": "1900007291", "prepayid": PREPAY_ID,
                      "package": "Sign=WXPay", "noncestr": SIGN_NONCE, "timestamp": str(SIGN_TS),
                      "sign": APP_PAY_SIGN}


def test_jsapi_pay_params_defaults_verify(generated: tuple[RSAPrivateKey, RSAPublicKey]) -> None:
    private_key, public_key = generated
    params = crypto.jsapi_pay_params(private_key, PAY_APPID, PREPAY_ID)
    assert re.fullmatch(r"[0-9]{10}", params["timeStamp"])
    assert re.fullmatch(r"[0-9A-Z]{32}", params["nonceStr"])
    message = f"{PAY_APPID}\n{params['timeStamp']}\n{params['nonceStr']}\nprepay_id={PREPAY_ID}\n"
    crypto.verify(public_key, message.encode(), params["paySign"])


# -- §11.3 response verification and its failure paths -----------------------------------------


def _verify_response(
    key: RSAPublicKey,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = RESP_BODY,
    now: float = RESP_TS,
    tolerance: int = 300,
) -> None:
    crypto.verify_signed_message(
        RESP_HEADERS if headers is None else headers,
        body,
        {PUB_KEY_ID: key},
        now=now,
        tolerance=tolerance,
    )


def test_pubkey_mode_response_vector_verifies(pubkey_mode_key: RSAPublicKey) -> None:
    _verify_response(pubkey_mode_key)


def test_response_message_layout() -> None:
    assert crypto.build_response_message(RESP_TS, "n", RESP_BODY) == (
        b"1722850421\nn\n" + RESP_BODY + b"\n"
    )
    assert crypto.build_response_message(RESP_TS, "n", b"") == b"1722850421\nn\n\n"


def test_header_names_are_case_insensitive(pubkey_mode_key: RSAPublicKey) -> None:
    lowered = {name.lower(): value for name, value in RESP_HEADERS.items()}
    _verify_response(pubkey_mode_key, headers=lowered)
    upper = {name.upper(): value for name, value in RESP_HEADERS.items()}
    _verify_response(pubkey_mode_key, headers=upper)
    # aiohttp's own header mappings (a server's request.headers, a client's response.headers)
    _verify_response(pubkey_mode_key, headers=CIMultiDictProxy(CIMultiDict(lowered)))
    _verify_response(pubkey_mode_key, headers=CIMultiDict(upper))


def test_a_missing_header_is_named_in_any_mapping(pubkey_mode_key: RSAPublicKey) -> None:
    without = {name: value for name, value in RESP_HEADERS.items() if name.lower() != "wechatpay-nonce"}
    for headers in (without, CIMultiDictProxy(CIMultiDict(without))):
        with pytest.raises(SignatureInvalid, match="wechatpay-nonce"):
            _verify_response(pubkey_mode_key, headers=headers)


def test_tampered_body_fails(pubkey_mode_key: RSAPublicKey) -> None:
    with pytest.raises(SignatureInvalid):
        _verify_response(pubkey_mode_key, body=RESP_BODY.replace(b"JyC91EIz1", b"JyC91EIz2"))


def test_body_with_trailing_newline_fails(pubkey_mode_key: RSAPublicKey) -> None:
    with pytest.raises(SignatureInvalid):
        _verify_response(pubkey_mode_key, body=RESP_BODY + b"\n")


def test_wrong_key_for_serial_fails(
    generated: tuple[RSAPrivateKey, RSAPublicKey],
) -> None:
    with pytest.raises(SignatureInvalid):
        _verify_response(generated[1])


def test_unknown_serial_fails(pubkey_mode_key: RSAPublicKey) -> None:
    headers = {**RESP_HEADERS, "Wechatpay-Serial": "PUB_KEY_ID_0000000000000024101100397200000007"}
    with pytest.raises(SignatureInvalid, match="unknown Wechatpay-Serial"):
        _verify_response(pubkey_mode_key, headers=headers)


def test_no_keys_at_all_fails() -> None:
    with pytest.raises(SignatureInvalid):
        crypto.verify_signed_message(RESP_HEADERS, RESP_BODY, {}, now=RESP_TS)


@pytest.mark.parametrize("offset", [299, -299, 299.9, 0])
def test_timestamp_within_window_passes(pubkey_mode_key: RSAPublicKey, offset: float) -> None:
    _verify_response(pubkey_mode_key, now=RESP_TS + offset)


@pytest.mark.parametrize("offset", [300, 301, 3600, -300, -301, -86400])
def test_timestamp_outside_window_is_skewed(pubkey_mode_key: RSAPublicKey, offset: int) -> None:
    # Negative offsets mean the message claims to come from the future.
    with pytest.raises(TimestampSkewed):
        _verify_response(pubkey_mode_key, now=RESP_TS + offset)


def test_tolerance_is_configurable(pubkey_mode_key: RSAPublicKey) -> None:
    _verify_response(pubkey_mode_key, now=RESP_TS + 3599, tolerance=3600)
    with pytest.raises(TimestampSkewed):
        _verify_response(pubkey_mode_key, now=RESP_TS + 60, tolerance=60)


def test_skewed_is_a_crypto_error_but_not_a_bad_signature() -> None:
    assert issubclass(TimestampSkewed, CryptoError)
    assert not issubclass(TimestampSkewed, SignatureInvalid)
    assert issubclass(SignatureInvalid, CryptoError)
    assert issubclass(DecryptionFailed, CryptoError)


@pytest.mark.parametrize("timestamp", ["", "abc", "1722850421.0", "-1722850421", " 1722850421", "１７２２"])
def test_non_integer_timestamp_is_signature_invalid(
    pubkey_mode_key: RSAPublicKey, timestamp: str
) -> None:
    headers = {**RESP_HEADERS, "Wechatpay-Timestamp": timestamp}
    with pytest.raises(SignatureInvalid):
        _verify_response(pubkey_mode_key, headers=headers)


def test_signature_probe_fails_like_a_bad_signature(pubkey_mode_key: RSAPublicKey) -> None:
    probe = "WECHATPAY/SIGNTEST/" + RESP_HEADERS["Wechatpay-Signature"]
    headers = {**RESP_HEADERS, "Wechatpay-Signature": probe}
    with pytest.raises(SignatureInvalid, match="probe"):
        _verify_response(pubkey_mode_key, headers=headers)


def test_line_break_in_nonce_is_signature_invalid(pubkey_mode_key: RSAPublicKey) -> None:
    nonce = RESP_HEADERS["Wechatpay-Nonce"] + "\n"
    with pytest.raises(SignatureInvalid):
        _verify_response(pubkey_mode_key, headers={**RESP_HEADERS, "Wechatpay-Nonce": nonce})


@pytest.mark.parametrize(
    "name",
    ["Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial"],
)
def test_missing_or_empty_header_fails(pubkey_mode_key: RSAPublicKey, name: str) -> None:
    without = {k: v for k, v in RESP_HEADERS.items() if k != name}
    with pytest.raises(SignatureInvalid, match="missing"):
        _verify_response(pubkey_mode_key, headers=without)
    with pytest.raises(SignatureInvalid, match="missing"):
        _verify_response(pubkey_mode_key, headers={**RESP_HEADERS, name: ""})


@pytest.mark.parametrize(
    "signature",
    ["not base64!", "QUJD", "QUJDRA", "签名", RESP_HEADERS["Wechatpay-Signature"][:-4]],
)
def test_bad_base64_or_truncated_signature_fails(
    pubkey_mode_key: RSAPublicKey, signature: str
) -> None:
    with pytest.raises(SignatureInvalid):
        _verify_response(pubkey_mode_key, headers={**RESP_HEADERS, "Wechatpay-Signature": signature})


def test_signature_type_header_must_name_rsa_when_present(pubkey_mode_key: RSAPublicKey) -> None:
    _verify_response(
        pubkey_mode_key,
        headers={**RESP_HEADERS, "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"},
    )
    with pytest.raises(SignatureInvalid):
        _verify_response(
            pubkey_mode_key, headers={**RESP_HEADERS, "Wechatpay-Signature-Type": "WECHATPAY2-SM2-WITH-SM3"}
        )


def test_verify_rejects_bad_base64_directly(pubkey_mode_key: RSAPublicKey) -> None:
    message = crypto.build_response_message(RESP_TS, RESP_HEADERS["Wechatpay-Nonce"], RESP_BODY)
    crypto.verify(pubkey_mode_key, message, RESP_HEADERS["Wechatpay-Signature"])
    good = RESP_HEADERS["Wechatpay-Signature"]
    for bad in ("", "====", "abc", good.replace("+", "-"), good[:100] + "*" + good[100:], good + "!"):
        with pytest.raises(SignatureInvalid):
            crypto.verify(pubkey_mode_key, message, bad)
    with pytest.raises(SignatureInvalid):
        crypto.verify(pubkey_mode_key, message, _flip_last_byte(RESP_HEADERS["Wechatpay-Signature"]))


# -- simulator side: signed response headers ----------------------------------------------------


@pytest.mark.parametrize("body", [b'{"prepay_id":"wx1"}', b""])
def test_sign_response_headers_round_trip(
    generated: tuple[RSAPrivateKey, RSAPublicKey], body: bytes
) -> None:
    private_key, public_key = generated
    headers = crypto.sign_response_headers(private_key, PUB_KEY_ID, body, timestamp=RESP_TS, nonce="abc")
    assert headers["Wechatpay-Timestamp"] == str(RESP_TS)
    assert headers["Wechatpay-Nonce"] == "abc"
    assert headers["Wechatpay-Serial"] == PUB_KEY_ID
    assert headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    crypto.verify_signed_message(headers, body, {PUB_KEY_ID: public_key}, now=RESP_TS + 10)
    with pytest.raises(SignatureInvalid):
        crypto.verify_signed_message(headers, body + b" ", {PUB_KEY_ID: public_key}, now=RESP_TS)


def test_sign_response_headers_defaults(
    generated: tuple[RSAPrivateKey, RSAPublicKey],
    other_generated: tuple[RSAPrivateKey, RSAPublicKey],
) -> None:
    private_key, public_key = generated
    headers = crypto.sign_response_headers(private_key, "SERIAL", b"{}")
    assert re.fullmatch(r"[0-9a-f]{32}", headers["Wechatpay-Nonce"])
    now = float(headers["Wechatpay-Timestamp"])
    crypto.verify_signed_message(headers, b"{}", {"SERIAL": public_key}, now=now)
    with pytest.raises(SignatureInvalid):
        crypto.verify_signed_message(headers, b"{}", {"SERIAL": other_generated[1]}, now=now)


# -- §11.4 full notification --------------------------------------------------------------------


def test_go_notification_vector_verifies_with_certificate() -> None:
    cert_key = crypto.load_public_key(VECTORS / "go_sdk_cert.pem")
    crypto.verify_signed_message(
        NOTIFY_HEADERS, NOTIFY_BODY, {NOTIFY_SERIAL: cert_key}, now=NOTIFY_TS
    )
    with pytest.raises(TimestampSkewed):
        crypto.verify_signed_message(
            NOTIFY_HEADERS, NOTIFY_BODY, {NOTIFY_SERIAL: cert_key}, now=NOTIFY_TS + 300
        )


def test_go_notification_vector_decrypts_with_its_16_byte_key() -> None:
    # The Go test key "testMchAPIv3Key0" is 16 bytes (AES-128-GCM). The public API insists on a
    # real 32-byte APIv3 key, so the vector goes through the shared GCM primitive.
    assert crypto._gcm_open(b"testMchAPIv3Key0", "Kj7QIyUiYx1q", "payscore", NOTIFY_CIPHERTEXT) == (
        NOTIFY_PLAINTEXT
    )
    with pytest.raises(CryptoError) as excinfo:
        crypto.aead_decrypt("testMchAPIv3Key0", "Kj7QIyUiYx1q", "payscore", NOTIFY_CIPHERTEXT)
    assert not isinstance(excinfo.value, DecryptionFailed)


# -- §11.5 / §11.6 AEAD -------------------------------------------------------------------------


def test_java_aead_vector_encrypts_and_decrypts() -> None:
    expected = "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI="
    assert crypto.aead_encrypt(JAVA_APIV3_KEY, "uluk4a9R25RW", "associatedData", b"message") == expected
    assert crypto.aead_decrypt(JAVA_APIV3_KEY, "uluk4a9R25RW", "associatedData", expected) == b"message"
    assert crypto.aead_decrypt(JAVA_APIV3_KEY.encode(), "uluk4a9R25RW", "associatedData", expected) == (
        b"message"
    )


def test_go_aead_vector_via_gcm_primitive() -> None:
    plaintext = crypto._gcm_open(
        b"testAPIv3Key0000",
        "wCq51qZv4Yfg",
        "Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8",
        "FsdXzxryWfKwvLJKf8LG/ToRPTRh8RN9wROC",
    )
    assert plaintext == b"Hello World"


def test_java_certificates_vector_decrypts_to_the_platform_certificate() -> None:
    ciphertext = (VECTORS / "java_certificates_ciphertext.txt").read_text().strip()
    pem = crypto.aead_decrypt(JAVA_APIV3_KEY, "14b16c03dc1b", "certificate", ciphertext)
    cert = x509.load_pem_x509_certificate(pem)
    assert format(cert.serial_number, "X") == "5DEA10EF55877E3CF6C33255C2E7DEFFF7E427EC"
    assert "Tenpay.com" in cert.subject.rfc4514_string()
    assert isinstance(crypto.load_public_key(pem), RSAPublicKey)
    with pytest.raises(DecryptionFailed):
        crypto.aead_decrypt(JAVA_APIV3_KEY, "14b16c03dc1b", "transaction", ciphertext)


def test_aead_round_trip() -> None:
    plaintext = '{"out_trade_no":"A1","trade_state":"SUCCESS","summary":"支付成功"}'.encode()
    sealed = crypto.aead_encrypt(APIV3_KEY, "0123456789ab", "transaction", plaintext)
    assert len(base64.b64decode(sealed)) == len(plaintext) + 16
    assert crypto.aead_decrypt(APIV3_KEY.encode(), "0123456789ab", "transaction", sealed) == plaintext


def test_aead_missing_associated_data_means_empty() -> None:
    sealed = crypto.aead_encrypt(APIV3_KEY, "0123456789ab", None, b"x")
    assert crypto.aead_decrypt(APIV3_KEY, "0123456789ab", "", sealed) == b"x"
    with pytest.raises(DecryptionFailed):
        crypto.aead_decrypt(APIV3_KEY, "0123456789ab", "transaction", sealed)


@pytest.fixture()
def sealed() -> str:
    return crypto.aead_encrypt(APIV3_KEY, "0123456789ab", "transaction", b"secret resource")


def test_aead_wrong_key_fails(sealed: str) -> None:
    with pytest.raises(DecryptionFailed):
        crypto.aead_decrypt("X" * 32, "0123456789ab", "transaction", sealed)


def test_aead_wrong_nonce_fails(sealed: str) -> None:
    with pytest.raises(DecryptionFailed):
        crypto.aead_decrypt(APIV3_KEY, "0123456789ac", "transaction", sealed)


def test_aead_tampered_tag_fails(sealed: str) -> None:
    with pytest.raises(DecryptionFailed):
        crypto.aead_decrypt(APIV3_KEY, "0123456789ab", "transaction", _flip_last_byte(sealed))


def test_aead_rejects_non_alphabet_characters_in_base64(sealed: str) -> None:
    with pytest.raises(DecryptionFailed):
        crypto.aead_decrypt(APIV3_KEY, "0123456789ab", "transaction", sealed[:8] + "*" + sealed[8:])


def test_aead_tampered_ciphertext_fails(sealed: str) -> None:
    raw = bytearray(base64.b64decode(sealed))
    raw[0] ^= 0x80
    with pytest.raises(DecryptionFailed):
        crypto.aead_decrypt(APIV3_KEY, "0123456789ab", "transaction", base64.b64encode(raw).decode())


@pytest.mark.parametrize("ciphertext", ["not base64!", "QUJD", "", base64.b64encode(b"short").decode()])
def test_aead_malformed_ciphertext_fails(ciphertext: str) -> None:
    with pytest.raises(DecryptionFailed):
        crypto.aead_decrypt(APIV3_KEY, "0123456789ab", "transaction", ciphertext)


@pytest.mark.parametrize("nonce", ["", "short", "0123456789abc"])
def test_aead_nonce_must_be_12_bytes(sealed: str, nonce: str) -> None:
    with pytest.raises(DecryptionFailed):
        crypto.aead_decrypt(APIV3_KEY, nonce, "transaction", sealed)
    with pytest.raises(CryptoError, match="12 bytes"):
        crypto.aead_encrypt(APIV3_KEY, nonce, "transaction", b"x")


@pytest.mark.parametrize("key", ["", "k" * 16, "k" * 31, "k" * 33, b"k" * 24, "密" * 11])
def test_aead_key_must_be_32_bytes(sealed: str, key: str | bytes) -> None:
    with pytest.raises(CryptoError, match="32 bytes") as excinfo:
        crypto.aead_decrypt(key, "0123456789ab", "transaction", sealed)
    assert not isinstance(excinfo.value, DecryptionFailed)
    with pytest.raises(CryptoError, match="32 bytes"):
        crypto.aead_encrypt(key, "0123456789ab", "transaction", b"x")


# -- §11.7 RSA signature ------------------------------------------------------------------------


def test_go_rsa_signature_vector() -> None:
    key = crypto.load_private_key(VECTORS / "go_sdk_key.pem")
    assert crypto.sign(key, b"source") == GO_SOURCE_SIGNATURE
    # The same key pair backs the §11.4 certificate.
    cert_key = crypto.load_public_key(VECTORS / "go_sdk_cert.pem")
    crypto.verify(cert_key, b"source", GO_SOURCE_SIGNATURE)
    with pytest.raises(SignatureInvalid):
        crypto.verify(cert_key, b"source\n", GO_SOURCE_SIGNATURE)


# -- §11.8 bill hash ----------------------------------------------------------------------------


def test_gunsluo_bill_hash_is_over_bom_and_crlf_bytes() -> None:
    text = (VECTORS / "gunsluo_tradebill_lf.csv").read_bytes()
    assert b"\r" not in text and not text.startswith(b"\xef\xbb\xbf")
    wire_bytes = b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n")
    assert crypto.sha1_hex(wire_bytes) == "dcd7ceb3d382a1181798368bb15d8437de46c00f"
    assert crypto.sha1_hex(text).startswith("b18b51eb")


def test_sha1_hex_known_answer() -> None:
    assert crypto.sha1_hex(b"abc") == "a9993e364706816aba3e25717850c26c9cd0d89d"


# -- keys ---------------------------------------------------------------------------------------


def test_load_private_key_accepts_pkcs8_pkcs1_text_bytes_and_path(
    generated: tuple[RSAPrivateKey, RSAPublicKey], tmp_path: Path
) -> None:
    private_key, _ = generated
    expected = private_key.private_numbers()
    pkcs8 = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pkcs1 = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    path = tmp_path / "apiclient_key.pem"
    path.write_bytes(pkcs1)
    for source in (pkcs8, pkcs8.decode(), pkcs1, pkcs1.decode(), path, b"\n  " + pkcs8 + b"\n\n"):
        assert crypto.load_private_key(source).private_numbers() == expected


def test_load_public_key_accepts_spki_and_certificate(
    generated: tuple[RSAPrivateKey, RSAPublicKey], pubkey_mode_key: RSAPublicKey
) -> None:
    _, public_key = generated
    spki = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert crypto.load_public_key(spki.decode()).public_numbers() == public_key.public_numbers()
    from_cert = crypto.load_public_key((VECTORS / "go_sdk_cert.pem").read_bytes())
    from_key = crypto.load_private_key(VECTORS / "go_sdk_key.pem").public_key()
    assert from_cert.public_numbers() == from_key.public_numbers()
    assert pubkey_mode_key.key_size == 2048


def test_loaders_reject_bad_input(tmp_path: Path) -> None:
    public_pem = (VECTORS / "pubkey_mode_public_key.pem").read_bytes()
    private_pem = (VECTORS / "official_merchant_key.pem").read_bytes()
    corrupted = private_pem.replace(b"ASCBKYw", b"ASCBKYx")
    for bad in (b"", "garbage", public_pem, corrupted, tmp_path / "missing.pem"):
        with pytest.raises(CryptoError):
            crypto.load_private_key(bad)
    for bad in (b"", "garbage", private_pem, b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"):
        with pytest.raises(CryptoError):
            crypto.load_public_key(bad)


def test_loaders_say_when_given_a_path_string_instead_of_pem() -> None:
    with pytest.raises(CryptoError, match="not a PEM document"):
        crypto.load_private_key(str(VECTORS / "official_merchant_key.pem"))
    with pytest.raises(CryptoError, match="not a PEM document"):
        crypto.load_public_key(str(VECTORS / "pubkey_mode_public_key.pem"))


def test_loaders_reject_encrypted_and_non_rsa_keys() -> None:
    rsa_key = crypto.load_private_key(VECTORS / "official_merchant_key.pem")
    encrypted = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(CryptoError, match="encrypted"):
        crypto.load_private_key(encrypted)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_private = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ec_public = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(CryptoError, match="RSA"):
        crypto.load_private_key(ec_private)
    with pytest.raises(CryptoError, match="RSA"):
        crypto.load_public_key(ec_public)


def test_generate_key_pair_gives_matching_2048_bit_pems() -> None:
    private_pem, public_pem = crypto.generate_key_pair()
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    private_key = crypto.load_private_key(private_pem)
    assert private_key.key_size == 2048
    signature = crypto.sign(private_key, b"m")
    assert len(signature) == 344
    crypto.verify(crypto.load_public_key(public_pem), b"m", signature)


def test_nonce_str_shape() -> None:
    nonces = {crypto.nonce_str() for _ in range(20)}
    assert len(nonces) == 20
    assert all(re.fullmatch(r"[0-9A-Z]{32}", n) for n in nonces)
    assert re.fullmatch(r"[0-9A-Z]{8}", crypto.nonce_str(8))
