"""The OpenAPI 3.0.3 description of payflow's HTTP API (DESIGN §6.2) as data, and `GET /openapi.json`.

The spec states the contract independently of the code (literal limits, not imports from `payloads`),
so that the schemathesis run in tests/http/test_openapi.py catches the code drifting from it.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

import payflow
from payflow.wechat.api import H5_TYPES, TRADE_TYPES

Schema = dict[str, Any]

STATES = ["created", "prepaid", "notified", "synced", "reconciled", "closed", "needs_review", "refunded"]
REFUND_STATES = ["created", "processing", "succeeded", "synced", "abnormal", "closed", "failed"]
OUT_REFUND_NO_PATTERN = "^[0-9A-Za-z_|*@-]{1,64}$"
SOURCES = ["api", "notify", "query", "bill", "admin", "sweeper", "backend"]
ACTIONS = ["recheck", "resend", "requeue", "dismiss"]
OUT_TRADE_NO_PATTERN = "^[0-9A-Za-z_-]{6,32}$"
# payloads._text: no C0 or C1 control, DEL or bidi override/isolate, and not only whitespace (what
# str.strip() removes). Spelled as escapes, so that every regex dialect (ECMA, Python, Rust) reads it the
# same way. The byte limits (WeChat counts UTF-8 bytes) are in the descriptions: no JSON Schema keyword says it.
_SPACE = "\\u0020\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_UNSAFE = "\\u0000-\\u001f\\u007f-\\u009f\\u202a-\\u202e\\u2066-\\u2069"
TEXT_PATTERN = f"^[^{_UNSAFE}]*[^{_UNSAFE}{_SPACE}][^{_UNSAFE}]*$"

_REF = "#/components/schemas/"


def _ref(name: str) -> Schema:
    return {"$ref": _REF + name}


def _object(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """A closed object: every property but the optional ones is required, no others are allowed."""
    return {"type": "object", "additionalProperties": False,
            "required": [name for name in properties if name not in optional], "properties": properties}


def _text(max_length: int, description: str) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": TEXT_PATTERN,
            "description": description}


def _nullable(schema: Schema) -> Schema:
    if "enum" in schema:
        return {**schema, "nullable": True, "enum": [*schema["enum"], None]}
    return {**schema, "nullable": True}


_DATE_TIME: Schema = {"type": "string", "format": "date-time"}
_DATE: Schema = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
_AMOUNT: Schema = {"type": "integer", "minimum": 1, "maximum": 2147483647, "description": "fen (CNY cents)"}
_OUT_TRADE_NO: Schema = {"type": "string", "minLength": 6, "maxLength": 32, "pattern": OUT_TRADE_NO_PATTERN}
_STATE: Schema = {"type": "string", "enum": STATES}
_OUT_REFUND_NO: Schema = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": OUT_REFUND_NO_PATTERN}

_PAYMENT_PROPERTIES: dict[str, Schema] = {
    "out_trade_no": _OUT_TRADE_NO,
    "order_id": {"type": "string", "minLength": 1, "maxLength": 64},
    "state": _STATE,
    "amount": _AMOUNT,
    "paid": {"type": "boolean", "description": "true in notified, synced, reconciled and refunded"},
    "transaction_id": _nullable({"type": "string"}),
    "paid_at": _nullable(_DATE_TIME),
    "expires_at": _DATE_TIME,
    "trade_type": {"type": "string", "enum": list(TRADE_TYPES), "description": "the product it is sold through"},
}

_APP_PARAMS = _object({
    "appid": {"type": "string"},
    "partnerid": {"type": "string", "description": "the mchid"},
    "prepayid": {"type": "string"},
    "package": {"type": "string", "enum": ["Sign=WXPay"]},
    "noncestr": {"type": "string"},
    "timestamp": {"type": "string", "pattern": "^[0-9]+$"},
    "sign": {"type": "string"},
})

_PAY_PARAMS = _object({
    "appId": {"type": "string"},
    "timeStamp": {"type": "string", "pattern": "^[0-9]+$"},
    "nonceStr": {"type": "string"},
    "package": {"type": "string", "pattern": "^prepay_id=.+$"},
    "signType": {"type": "string", "enum": ["RSA"]},
    "paySign": {"type": "string"},
})


def _error(codes: list[str], *, with_state: bool = False, refunds: bool = False) -> Schema:
    """The error envelope of middlewares.api_middleware, narrowed to the codes one status can carry; `refunds`:
    with the two fields a refund's errors may add."""
    body: dict[str, Schema] = {
        "code": {"type": "string", "enum": codes},
        "message": {"type": "string"},
        "field": {"type": "string", "description": "the offending field or parameter"},
        "wechat_code": {"type": "string", "description": "WeChat Pay's own error code"},
        "state": {**_STATE, "description": "the payment's current state"},
    }
    optional: tuple[str, ...] = ("field", "wechat_code") if with_state else ("field", "wechat_code", "state")
    if refunds:
        body["refundable"] = {"type": "integer", "minimum": 0, "description": "fen left to refund"}
        body["out_refund_no"] = {**_OUT_REFUND_NO, "description": "the stored refund: read it, or retry with it"}
        optional = (*optional, "refundable", "out_refund_no")
    return _object({"error": _object(body, optional=optional)})


_REFUND = _object({
    "out_refund_no": _OUT_REFUND_NO,
    "out_trade_no": _OUT_TRADE_NO,
    "state": {"type": "string", "enum": REFUND_STATES},
    "amount": _AMOUNT,
    "reason": _nullable({"type": "string"}),
    "refund_id": _nullable({"type": "string", "description": "WeChat's, once it accepted the refund"}),
    "created_at": _DATE_TIME,
    "succeeded_at": _nullable(_DATE_TIME),
    "failure": _nullable({"type": "string", "description": "WeChat's code when it refused (failed) or closed it"}),
})


SCHEMAS: dict[str, Schema] = {
    "State": _STATE,
    "NewPayment": _object({
        "order_id": _text(64, "the business order; idempotency key of this request"),
        "amount": _AMOUNT,
        "description": _text(127, "shown to the payer; at most 127 bytes of UTF-8 (a Chinese character is 3), "
                                  "no character above U+FFFF"),
        "trade_type": {"type": "string", "enum": list(TRADE_TYPES),
                       "description": "jsapi (default), miniprogram, native, h5 or app"},
        "openid": _text(128, "jsapi and miniprogram only (required): the payer's openid under that appid"),
        "payer_client_ip": {"type": "string", "maxLength": 45,
                            "description": "h5 only (required): the payer's IPv4 or IPv6 address"},
        "h5_type": {"type": "string", "enum": list(H5_TYPES), "description": "h5 only (required)"},
        "attach": _nullable(_text(128, "returned as is in the paid event; at most 128 bytes of UTF-8, no "
                                       "character above U+FFFF; null is the same as absent")),
        "out_trade_no": _nullable({**_OUT_TRADE_NO, "description": "chosen by payflow when absent or null"}),
        "expires_in": _nullable({"type": "integer", "minimum": 60, "maximum": 604800,
                                 "description": "seconds; PAYFLOW_PAYMENT_TTL when absent or null"}),
    }, optional=("trade_type", "openid", "payer_client_ip", "h5_type", "attach", "out_trade_no", "expires_in")),
    "Note": _object({"note": _text(500, "why the operator acts; kept on the event")}),
    "Payment": _object(_PAYMENT_PROPERTIES),
    "PaymentView": _object({**_PAYMENT_PROPERTIES,
                            "refunded_amount": {"type": "integer", "minimum": 0,
                                                "description": "fen WeChat says were refunded"}}),
    "NewRefund": _object({
        "amount": _AMOUNT,
        "reason": _nullable(_text(80, "shown to the payer; at most 80 bytes of UTF-8, no character above U+FFFF")),
        "out_refund_no": _nullable({**_OUT_REFUND_NO, "description": "the idempotency key; chosen by payflow when "
                                                                     "absent or null"}),
    }, optional=("reason", "out_refund_no")),
    "AdminRefund": _object({
        "note": _text(500, "why the operator refunds; kept on the events"),
        "amount": _nullable({**_AMOUNT, "description": "fen; all that is left to refund when absent or null"}),
    }, optional=("amount",)),
    "Refund": _REFUND,
    "RefundList": _object({"out_trade_no": _OUT_TRADE_NO, "refunds": {"type": "array", "items": _ref("Refund")}}),
    "PayParams": _PAY_PARAMS,
    "CreatedPayment": _object({
        **_PAYMENT_PROPERTIES,
        "prepay_id": _nullable({"type": "string"}),
        # Inlined: in OpenAPI 3.0 a $ref ignores its siblings, `nullable` included.
        "pay_params": _nullable({**_PAY_PARAMS, "description": "jsapi, miniprogram: for wx.requestPayment; "
                                                               "null unless prepaid"}),
        "code_url": _nullable({"type": "string", "description": "native: the QR code's content; null unless prepaid"}),
        "h5_url": _nullable({"type": "string", "description": "h5: where to send the payer; null unless prepaid"}),
        "app_params": _nullable({**_APP_PARAMS, "description": "app: the App SDK's PayReq; null unless prepaid"}),
    }, optional=("pay_params", "code_url", "h5_url", "app_params")),
    "AdminPayment": _object({
        **_PAYMENT_PROPERTIES,
        "attempts": {"type": "integer", "minimum": 0},
        "next_attempt_at": _nullable(_DATE_TIME),
        "created_at": _DATE_TIME,
        "updated_at": _DATE_TIME,
    }),
    "PaymentList": _object({
        "payments": {"type": "array", "items": _ref("AdminPayment")},
        "next_cursor": _nullable({"type": "string", "description": "pass as `cursor` for the next page"}),
    }),
    "ActionResult": _object({
        "payment": _ref("Payment"),
        "action": {"type": "string", "enum": ACTIONS},
        "outcome": {"type": "string"},
    }),
    "Event": _object({
        "id": {"type": "integer"},
        "from": _nullable({**_STATE, "description": "null for the creation event"}),
        "to": _STATE,
        "trigger": {"type": "string"},
        "source": {"type": "string", "enum": SOURCES},
        "detail": {"type": "object"},
        "at": _DATE_TIME,
    }),
    "Timeline": _object({
        "out_trade_no": _OUT_TRADE_NO,
        "events": {"type": "array", "items": _ref("Event"), "description": "oldest first"},
    }),
    "ReconciliationRun": _object({
        "id": {"type": "integer"},
        "bill_date": _DATE,
        "started_at": _DATE_TIME,
        "finished_at": _nullable(_DATE_TIME),
        "status": {"type": "string", "enum": ["running", "clean", "discrepancies", "failed"]},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "error": _nullable({"type": "string"}),
    }),
    "Discrepancy": _object({
        "bill_date": _DATE,
        "out_trade_no": {"type": "string"},
        "category": {"type": "string",
                     "enum": ["AMOUNT_MISMATCH", "PLATFORM_MISS", "BANK_MISS", "PAID_AFTER_CLOSE", "REFUND",
                              "REFUND_UNKNOWN", "REFUND_MISMATCH", "REFUND_MISSING"]},
        "detail": {"type": "object"},
        "found_at": _DATE_TIME,
    }),
    "Discrepancies": _object({
        "date": _DATE,
        "runs": {"type": "array", "items": _ref("ReconciliationRun")},
        "discrepancies": {"type": "array", "items": _ref("Discrepancy")},
    }),
    "Notification": {
        "type": "object",
        "description": "WeChat Pay's notification envelope; verified over the raw bytes before it is parsed",
        "required": ["id", "create_time", "event_type", "resource_type", "resource"],
        "properties": {
            "id": {"type": "string"},
            "create_time": {"type": "string"},
            "event_type": {"type": "string"},
            "resource_type": {"type": "string"},
            "summary": {"type": "string"},
            "resource": {
                "type": "object",
                "required": ["algorithm", "ciphertext", "nonce"],
                "properties": {
                    "algorithm": {"type": "string", "enum": ["AEAD_AES_256_GCM"]},
                    "ciphertext": {"type": "string"},
                    "nonce": {"type": "string"},
                    "associated_data": {"type": "string"},
                    "original_type": {"type": "string"},
                },
            },
        },
    },
    "NotifyFailure": _object({"code": {"type": "string", "enum": ["FAIL"]}, "message": {"type": "string"}}),
    "Health": _object({"status": {"type": "string", "enum": ["ok"]}}),
    "Ready": _object({"status": {"type": "string", "enum": ["ready"]}}),
    "BadJson": _error(["invalid_json"]),
    "Unauthorized": _error(["unauthorized"]),
    "NotFound": _error(["not_found"]),
    "Conflict": _error(["conflict"]),
    "ActionNotApplicable": _error(["action_not_applicable"], with_state=True),
    "PayloadTooLarge": _error(["payload_too_large"]),
    "UnsupportedMediaType": _error(["unsupported_media_type"]),
    "InvalidRequest": _error(["invalid_request"]),
    "WechatRejected": _error(["wechat_rejected"]),
    "Unavailable": _error(["wechat_unavailable", "wechat_throttled", "store_unavailable", "not_configured"]),
    "RefundConflict": _error(["refund_conflict", "not_refundable", "conflict"], refunds=True),
    "RefundInvalid": _error(["invalid_request", "refund_exceeds_payment"], refunds=True),
    "RefundUnavailable": _error(["refund_deferred", "wechat_unavailable", "wechat_throttled", "store_unavailable",
                                 "not_configured"], refunds=True),
}

_HEADERS = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}


def _json(description: str, schema: str) -> Schema:
    return {"description": description, "headers": _HEADERS,
            "content": {"application/json": {"schema": _ref(schema)}}}


RESPONSES: dict[str, Schema] = {
    "BadJson": _json("malformed JSON, or not a JSON object", "BadJson"),
    "Unauthorized": _json("missing or wrong bearer token", "Unauthorized"),
    "NotFound": _json("no such payment (or no such path)", "NotFound"),
    "PayloadTooLarge": _json("the body is larger than PAYFLOW_MAX_BODY_BYTES", "PayloadTooLarge"),
    "UnsupportedMediaType": _json("Content-Type is not application/json", "UnsupportedMediaType"),
    "InvalidRequest": _json("a field or parameter is invalid; `field` names it", "InvalidRequest"),
    "WechatRejected": _json("WeChat Pay refused the call for good; `wechat_code` says why", "WechatRejected"),
    "Unavailable": _json("WeChat Pay or the store cannot be reached now; retry later", "Unavailable"),
}


def _responses(ok: dict[str, Schema], *errors: str) -> dict[str, Schema]:
    named = {"400": "BadJson", "401": "Unauthorized", "404": "NotFound", "413": "PayloadTooLarge",
             "415": "UnsupportedMediaType", "422": "InvalidRequest", "502": "WechatRejected", "503": "Unavailable"}
    return {**ok, **{status: {"$ref": "#/components/responses/" + named[status]} for status in errors}}


_API: list[dict[str, list[str]]] = [{"apiToken": []}, {"adminToken": []}]
_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
_PATH_OUT_TRADE_NO = {"$ref": "#/components/parameters/OutTradeNo"}
_REQUEST_ID = {"$ref": "#/components/parameters/RequestId"}


def _operation(summary: str, responses: dict[str, Schema], *, security: list[Any] | None = None,
               parameters: list[Schema] | None = None, body: str | None = None, tag: str = "payments",
               **extra: Any) -> Schema:
    operation: Schema = {"summary": summary, "tags": [tag], "parameters": [*(parameters or []), _REQUEST_ID],
                         "responses": responses, **extra}
    operation["security"] = security if security is not None else []
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    return operation


def _wechat_header(name: str, description: str, **schema: Any) -> Schema:
    return {"name": name, "in": "header", "required": True, "description": description,
            "schema": {"type": "string", **schema}}


PATHS: dict[str, Schema] = {
    "/v1/payments": {"post": _operation(
        "Create a payment and place its JSAPI order; idempotent by order_id",
        _responses({
            "200": _json("an earlier request with this order_id and the same parameters made it", "CreatedPayment"),
            "201": _json("created (and placed, unless WeChat's answer is still unknown)", "CreatedPayment"),
            "409": _json("this order_id already has a payment with other parameters, or out_trade_no is taken",
                         "Conflict"),
        }, "400", "401", "413", "415", "422", "502", "503"),
        security=_API, body="NewPayment", operationId="createPayment")},
    "/v1/payments/{out_trade_no}": {"get": _operation(
        "The payment's current view; asks WeChat first while it is prepaid (throttled)",
        _responses({"200": _json("the payment", "PaymentView")}, "401", "404", "422", "503"),
        security=_API, parameters=[_PATH_OUT_TRADE_NO], operationId="getPayment")},
    "/v1/payments/{out_trade_no}/refunds": {
        "post": _operation(
            "Refund (part of) a paid payment: stored first, then asked of WeChat; idempotent by out_refund_no",
            _responses({
                "200": _json("an earlier request with this out_refund_no and the same fields made it", "Refund"),
                "201": _json("created; normally processing (WeChat accepted it), failed when WeChat refused it",
                             "Refund"),
                "409": _json("the payment is not paid (`state` says what it is), or out_refund_no names a refund "
                             "with other fields", "RefundConflict"),
                "422": _json("a field is invalid, or refunds would sum past the paid amount (`refundable` is "
                             "what is left)", "RefundInvalid"),
                "503": _json("stored, but WeChat cannot be asked now: it is asked again shortly; `out_refund_no` "
                             "names it", "RefundUnavailable"),
            }, "400", "401", "404", "413", "415"),
            security=_API, parameters=[_PATH_OUT_TRADE_NO], body="NewRefund", tag="refunds",
            operationId="createRefund"),
        "get": _operation(
            "The payment's refunds, oldest first",
            _responses({"200": _json("the refunds", "RefundList")}, "401", "404", "422", "503"),
            security=_API, parameters=[_PATH_OUT_TRADE_NO], tag="refunds", operationId="paymentRefunds"),
    },
    "/v1/refunds/{out_refund_no}": {"get": _operation(
        "The refund's current view; asks WeChat first while it is processing (throttled)",
        _responses({"200": _json("the refund", "Refund")}, "401", "404", "422", "503"),
        security=_API, tag="refunds", operationId="getRefund", parameters=[
            {"name": "out_refund_no", "in": "path", "required": True, "schema": _OUT_REFUND_NO}])},
    "/v1/admin/payments/{out_trade_no}/refund": {"post": _operation(
        "An operator refunds a payment in needs_review (paid after close, backend rejected, amount mismatch): all "
        "that is left unless `amount` says less",
        _responses({
            "201": _json("the refund (processing, or created when WeChat is asked again shortly)", "Refund"),
            "409": _json("the payment is not in needs_review (`state` says what it is)", "RefundConflict"),
            "422": _json("a field is invalid, or the amount is more than is left (`refundable`)", "RefundInvalid"),
        }, "400", "401", "404", "413", "415", "503"),
        security=_ADMIN, parameters=[_PATH_OUT_TRADE_NO], body="AdminRefund", tag="admin",
        operationId="adminRefund")},
    "/v1/payments/{out_trade_no}/close": {"post": _operation(
        "The payer gave up: a final query, then close at WeChat; a paid payment stays paid",
        _responses({"200": _json("the resulting payment", "Payment")}, "401", "404", "422", "502", "503"),
        security=_API, parameters=[_PATH_OUT_TRADE_NO], operationId="closePayment")},
    "/v1/payments/{out_trade_no}/events": {"get": _operation(
        "The payment's timeline, oldest first",
        _responses({"200": _json("the timeline", "Timeline")}, "401", "404", "422", "503"),
        security=_ADMIN, parameters=[_PATH_OUT_TRADE_NO], tag="admin", operationId="paymentEvents")},
    "/v1/admin/payments": {"get": _operation(
        "List payments by out_trade_no, or the stuck ones (non-terminal past their first deadline) oldest first",
        _responses({"200": _json("one page", "PaymentList")}, "401", "422", "503"),
        security=_ADMIN, tag="admin", operationId="listPayments", parameters=[
            {"name": "state", "in": "query", "required": False,
             "schema": {"type": "string", "enum": [*STATES, "stuck"]}},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
            {"name": "cursor", "in": "query", "required": False, "description": "opaque; a next_cursor",
             "schema": {"type": "string"}},
        ])},
    "/v1/admin/payments/{out_trade_no}/{action}": {"post": _operation(
        "An operator action through the state machine; leaves an event with source admin and the note",
        _responses({
            "200": _json("the action was taken", "ActionResult"),
            "409": _json("the action does not apply to the payment's current state", "ActionNotApplicable"),
        }, "400", "401", "404", "413", "415", "422", "502", "503"),
        security=_ADMIN, body="Note", tag="admin", operationId="paymentAction", parameters=[
            _PATH_OUT_TRADE_NO,
            {"name": "action", "in": "path", "required": True, "schema": {"type": "string", "enum": ACTIONS},
             "description": "recheck (query WeChat, created/prepaid), resend (forward again, notified), "
                            "requeue (needs_review → notified, then forward), dismiss (needs_review → closed)"},
        ])},
    "/v1/admin/discrepancies": {"get": _operation(
        "That day's reconciliation runs and findings",
        _responses({"200": _json("the runs and findings", "Discrepancies")}, "401", "422", "503"),
        security=_ADMIN, tag="admin", operationId="discrepancies", parameters=[
            {"name": "date", "in": "query", "required": True, "description": "the bill date, YYYY-MM-DD",
             "schema": _DATE},
        ])},
    "/v1/wechat/notify": {"post": {
        "summary": "WeChat Pay's notify_url; authenticated by WeChat's signature over the raw body",
        "tags": ["wechat"], "operationId": "wechatNotify", "security": [],
        "parameters": [
            _wechat_header("Wechatpay-Serial", "the WeChat Pay public key id (PUB_KEY_ID_...)"),
            _wechat_header("Wechatpay-Signature", "base64 RSA-SHA256 over timestamp, nonce and body"),
            _wechat_header("Wechatpay-Timestamp", "unix seconds; off by 300 s or more is refused",
                           pattern="^[0-9]{1,12}$"),
            _wechat_header("Wechatpay-Nonce", "no line breaks"),
            _REQUEST_ID,
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Notification")}}},
        "responses": {
            "204": {"description": "the effect is durable (or it was a duplicate); WeChat stops", "headers": _HEADERS},
            "400": _json("malformed, undecryptable or not this merchant's; WeChat delivers again", "NotifyFailure"),
            "401": _json("bad, probing or stale signature; WeChat delivers again", "NotifyFailure"),
            "413": _json("body too large", "NotifyFailure"),
            "500": _json("the store is unavailable or keys are not configured; WeChat delivers again",
                         "NotifyFailure"),
        },
    }},
    "/healthz": {"get": _operation(
        "Liveness", {"200": _json("the process answers", "Health")}, tag="ops", operationId="healthz")},
    "/readyz": {"get": _operation(
        "Readiness: the store answers",
        _responses({"200": _json("ready", "Ready")}, "503"), tag="ops", operationId="readyz")},
    "/metrics": {"get": _operation(
        "Prometheus metrics; the store's gauges are read at most every few seconds, whoever scrapes. Open "
        "unless PAYFLOW_METRICS_TOKEN is set; then that bearer token (or the admin token) is required",
        _responses({"200": {"description": "Prometheus text exposition format 0.0.4", "headers": _HEADERS,
                            "content": {"text/plain": {"schema": {"type": "string"}}}}}, "401", "503"),
        tag="ops", operationId="metrics")},
    "/openapi.json": {"get": _operation(
        "This document", {"200": {"description": "OpenAPI 3.0.3", "headers": _HEADERS,
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        tag="ops", operationId="openapi")},
}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "payflow",
        "version": payflow.__version__,
        "description": "WeChat Pay (APIv3, JSAPI) gateway. JSON in and out; amounts are integer fen; times are "
                       "RFC 3339. Errors are {\"error\": {\"code\", \"message\", \"field\"?, \"wechat_code\"?, "
                       "\"state\"?}}, except on /v1/wechat/notify, which answers WeChat's {\"code\": \"FAIL\", "
                       "\"message\"}. Every response carries X-Request-Id.",
    },
    "tags": [{"name": "payments"}, {"name": "refunds"}, {"name": "admin"}, {"name": "wechat"}, {"name": "ops"}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "responses": RESPONSES,
        "parameters": {
            "OutTradeNo": {"name": "out_trade_no", "in": "path", "required": True, "schema": _OUT_TRADE_NO},
            "RequestId": {"name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"},
                          "description": "echoed when it matches ^[0-9A-Za-z._-]{1,64}$, replaced otherwise"},
        },
        "headers": {
            "RequestId": {"required": True, "description": "the request's id, also bound to its log lines",
                          "schema": {"type": "string", "pattern": "^[0-9A-Za-z._-]{1,64}$"}},
        },
        "securitySchemes": {
            "apiToken": {"type": "http", "scheme": "bearer",
                         "description": "PAYFLOW_API_TOKEN; api endpoints accept the admin token too"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": "PAYFLOW_ADMIN_TOKEN"},
        },
    },
}

_BODY = json.dumps(SPEC, ensure_ascii=False).encode()


async def openapi_json(request: web.Request) -> web.Response:
    """`GET /openapi.json`: the spec; no auth, like /healthz."""
    return web.Response(body=_BODY, content_type="application/json")


def setup(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
