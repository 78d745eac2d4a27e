"""Field rules of the simulated API's request bodies and query strings (WECHATPAY_V3.md §3.1, §4, §5, §8;
Native, H5 and App: docs/wechatpay-products.md; refunds: docs/wechatpay-refunds.md)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from collections.abc import Container, Mapping
from typing import Any
from urllib.parse import urlsplit

from payflow.devkeys import KeySet
from simulator.wechat import products
from simulator.wechat.ledger import JsapiRequest, RefundRequest
from simulator.wechat.protocol import ApiError, param_error

_OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
_BILL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
FUNDS_ACCOUNTS = ("AVAILABLE", "UNSETTLED")
BILL_TYPES = ("ALL", "SUCCESS", "REFUND")
_LOOPBACK_NAMES = ("localhost",)


def json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise param_error("/", "请求体不是合法的JSON") from None
    if not isinstance(data, dict):
        raise param_error("/", "请求体必须是JSON对象")
    _reject_nulls(data, "")
    return data


def jsapi(body: bytes, keys: KeySet) -> JsapiRequest:
    """A JSAPI place-order body for the key set's own appid (`place_order`)."""
    return place_order(body, keys, products.JSAPI, (keys.appid,))


def place_order(body: bytes, keys: KeySet, product: products.Product, appids: Container[str]) -> JsapiRequest:
    """Validate a place-order body of `product` from an appid in `appids` (those bound to the mchid); the first
    broken rule becomes the error, naming its field (docs/wechatpay-products.md P.3)."""
    data = json_object(body)
    appid = _string(data, "appid", 32)
    mchid = _string(data, "mchid", 32)
    _same_mchid(mchid, keys, "/mchid", "body")
    if appid not in appids:
        raise ApiError(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配，请检查后再试", field="/appid",
                       value=appid)
    description = _string(data, "description", 127)
    out_trade_no = _string(data, "out_trade_no", 32)
    if not _OUT_TRADE_NO.fullmatch(out_trade_no):
        raise param_error("/out_trade_no", "out_trade_no必须为6-32位数字、大小写字母、_-|*", out_trade_no)
    notify_url = _notify_url(_string(data, "notify_url", 255))
    attach = _string(data, "attach", 128, required=False)
    time_expire = _time(data.get("time_expire"), "/time_expire") if "time_expire" in data else None
    _string(data, "goods_tag", 32, required=False)
    if "support_fapiao" in data and not isinstance(data["support_fapiao"], bool):
        raise param_error("/support_fapiao", "support_fapiao必须为布尔值", data["support_fapiao"])
    for name in ("detail", "settle_info"):
        if name in data and not isinstance(data[name], dict):
            raise param_error(f"/{name}", f"{name}必须为对象", data[name])
    _scene_info(data, product)
    amount = _object(data, "amount")
    total = amount.get("total")
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise param_error("/amount/total", "amount.total必须为不小于1的整数（单位：分）", total)
    if "currency" in amount and amount["currency"] != "CNY":
        raise param_error("/amount/currency", "amount.currency只能为CNY", amount["currency"])
    openid = None
    if product.openid_required:
        openid = _string(_object(data, "payer"), "openid", 128, prefix="/payer")
    return JsapiRequest(
        appid=appid, mchid=mchid, description=description, out_trade_no=out_trade_no,
        notify_url=notify_url, total=total, openid=openid, params=data, time_expire=time_expire,
        attach=attach, trade_type=product.trade_type,
    )


def _scene_info(data: Mapping[str, Any], product: products.Product) -> None:
    # Optional except for H5; when given, payer_client_ip is required in it (P.3).
    if "scene_info" not in data:
        if product.h5_scene_required:
            raise param_error("/scene_info", "H5支付必须传scene_info（payer_client_ip和h5_info）")
        return
    scene = data["scene_info"]
    if not isinstance(scene, dict):
        raise param_error("/scene_info", "scene_info必须为对象", scene)
    ip = _string(scene, "payer_client_ip", 45, prefix="/scene_info")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise param_error("/scene_info/payer_client_ip", "payer_client_ip必须为IPv4或IPv6地址", ip) from None
    _string(scene, "device_id", 32, required=False, prefix="/scene_info")
    if "store_info" in scene and not isinstance(scene["store_info"], dict):
        raise param_error("/scene_info/store_info", "store_info必须为对象", scene["store_info"])
    if not product.h5_scene_required:
        return
    h5_info = scene.get("h5_info")
    if not isinstance(h5_info, dict):
        raise param_error("/scene_info/h5_info", "H5支付必须传h5_info对象", h5_info)
    h5_type = _string(h5_info, "type", 32, prefix="/scene_info/h5_info")
    if h5_type not in products.H5_TYPES:
        raise param_error("/scene_info/h5_info/type", f"type只能为{'、'.join(products.H5_TYPES)}", h5_type)
    for name, limit in (("app_name", 64), ("app_url", 128), ("bundle_id", 128), ("package_name", 128)):
        _string(h5_info, name, limit, required=False, prefix="/scene_info/h5_info")


def refund(body: bytes) -> RefundRequest:
    """Validate a refund application (`POST /v3/refund/domestic/refunds`); the first broken rule is the error."""
    data = json_object(body)
    transaction_id = _string(data, "transaction_id", 32, required=False)
    out_trade_no = _string(data, "out_trade_no", 32, required=False)
    if transaction_id is None and out_trade_no is None:
        raise param_error("/out_trade_no", "transaction_id和out_trade_no必须二选一填写")
    if out_trade_no is not None and not _OUT_TRADE_NO.fullmatch(out_trade_no):
        raise param_error("/out_trade_no", "out_trade_no必须为6-32位数字、大小写字母、_-|*", out_trade_no)
    out_refund_no = _string(data, "out_refund_no", 64)
    if not _OUT_REFUND_NO.fullmatch(out_refund_no):
        raise param_error("/out_refund_no", "out_refund_no只能是数字、大小写字母_-|*@", out_refund_no)
    reason = _string(data, "reason", 80, required=False)
    notify_url = data.get("notify_url")
    if notify_url is not None:
        notify_url = _notify_url(_string(data, "notify_url", 256))
    funds_account = data.get("funds_account")
    if funds_account is not None and funds_account not in FUNDS_ACCOUNTS:
        raise param_error("/funds_account", f"funds_account只能为{'、'.join(FUNDS_ACCOUNTS)}", funds_account)
    amount = _object(data, "amount")
    refund_amount, total = (_fen(amount, name) for name in ("refund", "total"))
    if _string(amount, "currency", 16, prefix="/amount") != "CNY":
        raise param_error("/amount/currency", "amount.currency只能为CNY", amount["currency"])
    for pointer, value in (("/amount/from", amount.get("from", [])), ("/goods_detail", data.get("goods_detail", []))):
        # Accepted, not acted upon: the simulator has one funds account and no goods.
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise param_error(pointer, f"{pointer}必须为对象数组", value)
    return RefundRequest(
        out_refund_no=out_refund_no, refund=refund_amount, total=total, params=data, out_trade_no=out_trade_no,
        transaction_id=transaction_id, reason=reason, notify_url=notify_url, funds_account=funds_account,
    )


def _fen(amount: Mapping[str, Any], name: str) -> int:
    value = amount.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise param_error(f"/amount/{name}", f"amount.{name}必须为不小于1的整数（单位：分）", value)
    return value


def query_mchid(query: Mapping[str, str], keys: KeySet) -> None:
    mchid = query.get("mchid")
    if not mchid:
        raise param_error("mchid", "mchid 为必填项", None, "query_string")
    _same_mchid(mchid, keys, "mchid", "query_string")


def body_mchid(body: bytes, keys: KeySet) -> None:
    _same_mchid(_string(json_object(body), "mchid", 32), keys, "/mchid", "body")


def _same_mchid(mchid: str, keys: KeySet, field: str, location: str) -> None:
    # The Authorization mchid was already checked against the merchant; the request must agree with it.
    if mchid != keys.mchid:
        raise ApiError(400, "INVALID_REQUEST", "mchid与请求签名中的商户号不一致", field=field, value=mchid,
                       location=location)


def bill_request(query: Mapping[str, str], today: dt.date) -> tuple[dt.date, str, bool]:
    """(bill_date, bill_type, gzip) of a trade-bill application."""
    raw = query.get("bill_date", "")
    try:
        if not _BILL_DATE.fullmatch(raw):
            raise ValueError(raw)
        day = dt.date.fromisoformat(raw)
    except ValueError:
        raise param_error("bill_date", "bill_date格式应为yyyy-MM-DD", raw or None, "query_string") from None
    bill_type = query.get("bill_type", "ALL")
    if bill_type not in BILL_TYPES:
        raise param_error("bill_type", f"bill_type must be one of {', '.join(BILL_TYPES)}", bill_type,
                          "query_string")
    tar_type = query.get("tar_type")
    if tar_type not in (None, "GZIP"):
        raise param_error("tar_type", "tar_type只能为GZIP或不填", tar_type, "query_string")
    if day > today:
        raise ApiError(400, "NO_STATEMENT_EXIST", f"{raw}的账单尚未生成")
    return day, bill_type, tar_type == "GZIP"


def certificate_query(query: Mapping[str, str]) -> None:
    # The Java SDK asks for ?algorithm_type=RSA (WECHATPAY_V3 §10.6); the simulator issues RSA certificates only.
    algorithm = query.get("algorithm_type", "RSA")
    if algorithm != "RSA":
        raise param_error("algorithm_type", "algorithm_type只支持RSA", algorithm, "query_string")


def _reject_nulls(value: Any, pointer: str) -> None:
    # §1.4: null is not a value in APIv3 bodies; omit the field instead.
    if value is None:
        raise param_error(pointer or "/", f"{pointer or '/'} 不允许为null")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_nulls(item, f"{pointer}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_nulls(item, f"{pointer}/{index}")


def _string(
    data: Mapping[str, Any], name: str, limit: int, *, required: bool = True, prefix: str = ""
) -> Any:
    field = f"{prefix}/{name}"
    if name not in data:
        if required:
            raise param_error(field, f"输入源“{field}”映射到字段“{name}”必填性规则校验失败，此字段为必填项")
        return None
    value = data[name]
    if not isinstance(value, str) or not value:
        raise param_error(field, f"{name}必须为非空字符串", value)
    if len(value) > limit:
        raise param_error(field, f"{name}长度不能超过{limit}个字符", value)
    return value


def _object(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise param_error(f"/{name}", f"{name}为必填对象", value)
    return value


def _time(value: Any, field: str) -> dt.datetime:
    try:
        if not isinstance(value, str) or "T" not in value:
            raise ValueError(value)
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise param_error(field, f"{field}必须为RFC 3339时间，如2018-06-08T10:34:56+08:00", value) from None
    if moment.tzinfo is None:
        raise param_error(field, f"{field}必须带时区偏移", value)
    return moment


def _notify_url(url: str) -> str:
    parts = urlsplit(url)
    loopback = parts.hostname in _LOOPBACK_NAMES or _is_loopback_ip(parts.hostname)
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise param_error("/notify_url", "notify_url必须为https地址（http仅限本机回环地址）", url)
    if not parts.hostname or parts.query or parts.fragment:
        raise param_error("/notify_url", "notify_url必须为完整地址，且不能携带参数", url)
    return url


def _is_loopback_ip(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
