"""`WechatPayClient`: the merchant side of WeChat Pay APIv3 over aiohttp (JSAPI, query, close, bills).

Every 2xx answer, and every error taken as final, is verified before it is believed; errors are sorted
into retryable (outcome unknown or temporary) and final, per WECHATPAY_V3 §7.3.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import gzip
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from yarl import URL

from payflow import __version__, errors, logs
from payflow.metrics import Metrics
from payflow.ratelimit import Budgets, RateLimiter, Throttled
from payflow.settings import Settings
from payflow.wechat import crypto, failover, trust
from payflow.wechat.api import REFUND_STATUSES, Order, Placed, RefundAnswer, RefundRequest, Transaction
from payflow.wechat.certificates import CERTIFICATES_PATH, KeyRing

log = logs.get_logger(__name__)
T = TypeVar("T")

USER_AGENT = f"payflow/{__version__} (+aiohttp)"
BILL_DOWNLOAD_PATH = "/v3/billdownload/file"
REFUNDS_PATH = "/v3/refund/domestic/refunds"
# After FREQUENCY_LIMITED the API that answered it rests this long, for every caller of it: WeChat counts
# calls per second, so a quarter second stops a burst while a payer queued behind it still gets in within
# its wait (half of PAYFLOW_WECHAT_TIMEOUT).
RATE_LIMIT_PAUSE = 0.25
ORDER_NOT_EXIST = frozenset({"ORDER_NOT_EXIST", "ORDERNOTEXIST", "RESOURCE_NOT_EXISTS"})
ORDER_PAID = frozenset({"ORDERPAID", "ORDER_PAID"})
UNSETTLED_TRADE_STATES = frozenset({"NOTPAY", "USERPAYING"})


@dataclasses.dataclass(frozen=True, slots=True)
class BillInfo:
    bill_date: dt.date
    hash_type: str
    hash_value: str
    download_url: str
    gzip: bool


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body) if self.body else {}
        except ValueError as exc:
            raise errors.WechatRetryable(f"WeChat answered {self.status} with malformed JSON",
                                         status=self.status) from exc
        if not isinstance(value, dict):
            raise errors.WechatRetryable(f"WeChat answered {self.status} with a non-object", status=self.status)
        return value


class WechatPayClient:
    """Implements `payflow.wechat.api.WechatApi`. One instance per process; `aclose()` on shutdown."""

    def __init__(
        self,
        *,
        base_url: str,
        backup_url: str | None = None,
        mchid: str,
        appid: str,
        mch_serial: str,
        private_key: RSAPrivateKey,
        platform_keys: Mapping[str, RSAPublicKey],
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        limiter: Budgets | RateLimiter | None = None,
        place_attempts: int = 3,
        metrics: Metrics | None = None,
        breaker: failover.Breaker | None = None,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.domains = failover.Domains(self.base_url, backup_url, breaker)
        self.mchid = mchid
        self.appid = appid
        self.mch_serial = mch_serial
        self._private_key = private_key
        # A KeyRing is kept as it is (its certificates change while payflow runs); a plain mapping is copied.
        self._platform_keys = platform_keys if isinstance(platform_keys, KeyRing) else dict(platform_keys)
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # One budget per WeChat API; a lone RateLimiter (tests) is shared by all of them.
        self.limiter = limiter if isinstance(limiter, Budgets) else (
            Budgets.shared(limiter) if limiter is not None else Budgets())
        self._place_attempts = place_attempts
        self._now = now
        self._sleep = sleep
        self.metrics = metrics

    @classmethod
    def from_settings(cls, settings: Settings, *, keys: KeyRing | None = None, **kwargs: Any) -> WechatPayClient:
        """The client the settings describe; `keys` is the ring it shares with the notification verifier
        (default: a new one for PAYFLOW_WECHAT_KEY_MODE)."""
        assert settings.wechat_mch_key_file
        try:
            private_key = crypto.load_private_key(_read(settings.wechat_mch_key_file))
        except crypto.CryptoError as exc:
            raise errors.SettingsError(f"PAYFLOW_WECHAT_MCH_KEY_FILE: {exc}") from None
        return cls(
            base_url=settings.wechat_base_url,
            backup_url=settings.wechat_backup(),
            mchid=settings.wechat_mchid or "",
            appid=settings.wechat_appid or "",
            mch_serial=settings.wechat_mch_serial or "",
            private_key=private_key,
            platform_keys=keys if keys is not None else trust.key_ring(settings),
            **kwargs,
        )

    @property
    def platform_keys(self) -> Mapping[str, RSAPublicKey]:
        return self._platform_keys

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- WechatApi ----------------------------------------------------------------------------

    async def place(self, order: Order) -> Placed:
        """Place (or re-enter) the order on its product's API (WECHATPAY_V3 §3; docs/wechatpay-products.md)."""
        body: dict[str, Any] = {
            "appid": order.appid or self.appid,
            "mchid": self.mchid,
            "description": order.description,
            "out_trade_no": order.out_trade_no,
            "time_expire": order.time_expire.isoformat(timespec="seconds"),
            "notify_url": order.notify_url,
            "amount": {"total": order.amount, "currency": "CNY"},
        }
        if order.attach is not None:
            body["attach"] = order.attach
        if order.api == "jsapi":
            body["payer"] = {"openid": order.openid}
        elif order.api == "h5":
            body["scene_info"] = {"payer_client_ip": order.payer_client_ip, "h5_info": {"type": order.h5_type}}
        # Serialised once: every retry sends the identical bytes, which WeChat's re-entry rule requires.
        raw = _dumps(body)
        wanted = {"native": "code_url", "h5": "h5_url"}.get(order.api, "prepay_id")

        async def place() -> Placed:
            answer = await self._request("POST", f"/v3/pay/transactions/{order.api}", raw, endpoint=order.api)
            value = answer.json().get(wanted)
            if not isinstance(value, str) or not value:
                raise errors.WechatRetryable(f"WeChat's place-order answer has no {wanted}", status=answer.status)
            return Placed(**{wanted: value})

        return await self._retrying(order.api, place)

    async def download_certificates(self) -> tuple[Mapping[str, str], bytes]:
        """GET /v3/certificates: the headers and raw body, the signature left to the keeper (it may be made with
        a certificate only this very list brings: `CertificateKeeper.refresh`)."""
        answer = await self._request("GET", CERTIFICATES_PATH, b"", endpoint="certificates", verify=False)
        return answer.headers, answer.body

    async def query(self, out_trade_no: str, appid: str | None = None) -> Transaction | None:
        path = f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={self.mchid}"
        try:
            answer = await self._request("GET", path, b"", endpoint="query")
        except errors.WechatFinal as exc:
            if exc.status == 404 or exc.wechat_code in ORDER_NOT_EXIST:
                return None
            raise
        txn = parse_transaction(answer.json())
        self._check_ours(out_trade_no, txn, appid or self.appid)
        return txn

    def _check_ours(self, out_trade_no: str, txn: Transaction, appid: str) -> None:
        """Refuse a query answer about another order, merchant or appid (a misrouted or replayed answer):
        it is no fact about ours, so the caller asks again later, as after any retryable failure."""
        # A NOTPAY without mchid/appid changes nothing here: at most a close or a re-entry goes to WeChat
        # under our own mchid. Anything else changes the payment, so it must name us, as a notification must.
        optional = txn.trade_state in UNSETTLED_TRADE_STATES
        wrong = [name for name, asked, answered in (("out_trade_no", out_trade_no, txn.out_trade_no),
                                                    ("mchid", self.mchid, txn.mchid),
                                                    ("appid", appid, txn.appid))
                 if answered != asked and not (optional and answered is None and name != "out_trade_no")]
        if wrong:
            log.error("alert.query_mismatch", out_trade_no=out_trade_no, fields=wrong,
                      answered_out_trade_no=txn.out_trade_no, mchid=txn.mchid, appid=txn.appid,
                      trade_state=txn.trade_state)
            raise errors.WechatRetryable(f"query: the answer's {', '.join(wrong)} do not match the request")

    async def close_order(self, out_trade_no: str) -> None:
        path = f"/v3/pay/transactions/out-trade-no/{out_trade_no}/close"
        await self._request("POST", path, _dumps({"mchid": self.mchid}), endpoint="close")

    def pay_params(self, prepay_id: str, appid: str | None = None) -> dict[str, str]:
        params = crypto.jsapi_pay_params(self._private_key, appid or self.appid, prepay_id)
        return {name: str(value) for name, value in params.items()}

    def app_params(self, prepay_id: str, appid: str | None = None) -> dict[str, str]:
        params = crypto.app_pay_params(self._private_key, appid or self.appid, self.mchid, prepay_id)
        return {name: str(value) for name, value in params.items()}

    # --- refunds ------------------------------------------------------------------------------

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        """`POST /v3/refund/domestic/refunds` (docs/wechatpay-refunds.md R.1), retried with the identical bytes
        while the outcome is unknown: WeChat refunds an out_refund_no once, however often it is asked."""
        body: dict[str, Any] = {"out_refund_no": request.out_refund_no, "out_trade_no": request.out_trade_no}
        if request.transaction_id is not None:
            body["transaction_id"] = request.transaction_id
        if request.reason is not None:
            body["reason"] = request.reason
        if request.notify_url is not None:
            body["notify_url"] = request.notify_url
        body["amount"] = {"refund": request.amount, "total": request.total, "currency": "CNY"}
        raw = _dumps(body)

        async def apply() -> RefundAnswer:
            answer = await self._request("POST", REFUNDS_PATH, raw, endpoint="refund")
            return self._ours(request.out_refund_no, parse_refund(answer.json()))

        return await self._retrying("refund", apply)

    async def query_refund(self, out_refund_no: str) -> RefundAnswer | None:
        """`GET /v3/refund/domestic/refunds/{out_refund_no}`; None for RESOURCE_NOT_EXISTS."""
        try:
            answer = await self._request("GET", f"{REFUNDS_PATH}/{out_refund_no}", b"", endpoint="refund_query")
        except errors.WechatFinal as exc:
            if exc.status == 404 or exc.wechat_code == "RESOURCE_NOT_EXISTS":
                return None
            raise
        return self._ours(out_refund_no, parse_refund(answer.json()))

    def _ours(self, out_refund_no: str, answer: RefundAnswer) -> RefundAnswer:
        if answer.out_refund_no != out_refund_no:
            log.error("alert.query_mismatch", out_refund_no=out_refund_no, answered=answer.out_refund_no)
            raise errors.WechatRetryable("refund: the answer names another out_refund_no")
        return answer

    # --- bills --------------------------------------------------------------------------------

    async def trade_bill(self, bill_date: dt.date, *, gzip: bool = False) -> BillInfo:
        """Apply for a day's bill; a 5xx, a 429 or a lost answer is asked again (a GET: safe to repeat)."""
        path = f"/v3/bill/tradebill?bill_date={bill_date.isoformat()}&bill_type=ALL"
        if gzip:
            path += "&tar_type=GZIP"

        async def apply() -> BillInfo:
            body = (await self._request("GET", path, b"", endpoint="tradebill")).json()
            try:
                return BillInfo(bill_date, str(body["hash_type"]), str(body["hash_value"]).lower(),
                                str(body["download_url"]), gzip)
            except KeyError as exc:
                raise errors.WechatRetryable(f"trade bill answer lacks {exc.args[0]}") from None

        return await self._retrying("tradebill", apply)

    async def download_bill(self, info: BillInfo) -> bytes:
        """The bill's bytes (gunzipped), after checking their SHA1 against what the apply step said.

        A retryable failure (5xx, 429, a lost answer, a truncated gzip) is downloaded again; a bill that
        fails its SHA1 is refused at once."""
        url = URL(info.download_url, encoded=True)
        if url.path != BILL_DOWNLOAD_PATH:
            raise errors.WechatFinal(f"unexpected bill download URL path {url.path!r}")

        async def download() -> bytes:
            # The download answer is not signed (WECHATPAY_V3 §8.2); the SHA1 is what vouches for it.
            answer = await self._request("GET", url.raw_path_qs, b"", endpoint="billdownload",
                                         base=str(url.origin()), verify=False)
            if not info.gzip:
                return answer.body
            try:
                return gzip.decompress(answer.body)
            except (OSError, EOFError) as exc:
                raise errors.WechatRetryable(f"bill is not valid gzip: {exc}") from None

        data = await self._retrying("billdownload", download)
        if info.hash_type.upper() != "SHA1":
            raise errors.WechatFinal(f"unsupported bill hash type {info.hash_type!r}")
        if crypto.sha1_hex(data) != info.hash_value:
            raise errors.BillHashMismatch(f"bill for {info.bill_date} does not match its SHA1")
        return data

    async def _retrying(self, endpoint: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call` again after a retryable failure, up to `place_attempts` times with a short backoff.

        Only for calls that are safe to repeat: place-order with the identical body, and the bill GETs.
        A query is not retried here: the sweeper asks again on its own schedule."""
        for attempt in range(1, self._place_attempts + 1):
            try:
                return await call()
            except Throttled:
                raise  # nothing was sent, and the caller already waited as long as its class may
            except errors.WechatRetryable as exc:
                log.info("wechat.retried", endpoint=endpoint, attempt=attempt, error=str(exc),
                         wechat_code=exc.wechat_code)
                if attempt == self._place_attempts:
                    raise
                await self._sleep(min(0.2 * 2 ** (attempt - 1), 2.0))
        raise AssertionError("unreachable: the last attempt returns or raises")

    # --- transport ----------------------------------------------------------------------------

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _request(
        self, method: str, path_qs: str, body: bytes, *, endpoint: str, base: str | None = None,
        verify: bool = True,
    ) -> _Answer:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        # WeChat signs its answer with the key this names (during a migration, either is possible); with no key
        # trusted yet (certificate mode before the first download) it names none and WeChat picks a certificate.
        serial = (self._platform_keys.signing_serial() if isinstance(self._platform_keys, KeyRing)
                  else next(iter(self._platform_keys), ""))
        if serial:
            headers["Wechatpay-Serial"] = serial
        if method != "GET":
            headers["Content-Type"] = "application/json"
        # One Authorization per request target, made once: the backup domain gets the very bytes the primary
        # got (the signature covers method, path, timestamp, nonce and body, not the host).
        signed: dict[str, str] = {}

        async def send(domain: str) -> tuple[int, Mapping[str, str], bytes]:
            url = URL(f"{domain}{path_qs}", encoded=True)
            target = url.raw_path_qs
            if target not in signed:
                signed[target] = crypto.authorization_header(
                    self.mchid, self.mch_serial, self._private_key, method, target, body,
                    timestamp=int(self._now()))
            label = self.domains.label(domain)
            started = time.perf_counter()
            try:
                async with self._session_().request(method, url, data=body or None,
                                                    headers={"Authorization": signed[target], **headers},
                                                    timeout=self._timeout, allow_redirects=False) as response:
                    raw = await response.read()
                    status, response_headers = response.status, response.headers
            except (TimeoutError, aiohttp.ClientError) as exc:
                self._observe(endpoint, "network", started, label,
                              "unreachable" if isinstance(exc, failover.UNREACHABLE) else "answered")
                log.info("wechat.call_failed", endpoint=endpoint, domain=label, error=type(exc).__name__,
                         elapsed_ms=round((time.perf_counter() - started) * 1000, 1))
                raise
            self._observe(endpoint, "ok" if 200 <= status < 300 else f"{status // 100}xx", started, label, "answered")
            log.debug("wechat.called", endpoint=endpoint, status=status, domain=label,
                      elapsed_ms=round((time.perf_counter() - started) * 1000, 1))
            return status, response_headers, raw

        # One token per call, whichever domain answers it.
        await self.limiter.acquire(endpoint)
        try:
            # A connection failure or timeout on the primary is asked again, same bytes, on the backup. A timed-out
            # call may have reached WeChat, and that is safe for every call made here: queries and bill applies are
            # GETs; a close repeated is still a close; a place-order re-sent with the identical body is WeChat's
            # re-entry by out_trade_no, which answers the same prepay_id. A bill download goes where WeChat's
            # absolute download URL points (`base`, its origin), nowhere else.
            status, response_headers, raw = await self.domains.call(
                send, endpoint=endpoint, order=None if base is None else (base,))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise errors.WechatRetryable(f"{endpoint}: {type(exc).__name__}: {exc}") from None

        if 200 <= status < 300:
            if verify:
                self._verify(endpoint, response_headers, raw, status)
            if status == 202:  # USER_PAYING: accepted, not processed; ask again later
                raise errors.WechatRetryable(f"{endpoint}: 202 USER_PAYING", wechat_code="USER_PAYING", status=202)
            return _Answer(status, raw, response_headers)
        raise self._error(endpoint, status, response_headers, raw, verify=verify)

    def _observe(self, endpoint: str, outcome: str, started: float, domain: str, reached: str) -> None:
        if self.metrics is not None:
            self.metrics.wechat_seconds.labels(endpoint=endpoint, outcome=outcome).observe(
                time.perf_counter() - started)
            self.metrics.wechat_domains.labels(domain=domain, outcome=reached).inc()

    def _verify(self, endpoint: str, headers: Mapping[str, str], raw: bytes, status: int) -> None:
        try:
            crypto.verify_signed_message(headers, raw, self._platform_keys, now=self._now())
        except crypto.CryptoError as exc:
            # An unverifiable success may be forged; believe nothing, and let the caller ask again.
            log.warning("wechat.answer_unverified", endpoint=endpoint, status=status, error=str(exc))
            raise errors.WechatRetryable(f"{endpoint}: answer failed verification: {exc}", status=status) from None

    def _error(
        self, endpoint: str, status: int, headers: Mapping[str, str], raw: bytes, *, verify: bool
    ) -> errors.WechatError:
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {}
        code = payload.get("code") if isinstance(payload, dict) else None
        message = payload.get("message") if isinstance(payload, dict) else None
        text = f"{endpoint}: WeChat answered {status} {code or ''} {message or ''}".strip()
        if status == 429 or code in ("FREQUENCY_LIMITED", "RATELIMIT_EXCEEDED", "RATE_LIMITED"):
            self.limiter.pause(endpoint, RATE_LIMIT_PAUSE)
            return errors.WechatRetryable(text, wechat_code=code, status=status)
        if status >= 500 or status == 408:
            return errors.WechatRetryable(text, wechat_code=code, status=status)
        if status == 401 or not (verify or "Wechatpay-Signature" in headers):
            # WeChat never signs its 401 SIGN_ERROR, nor the bill download's answers (WECHATPAY_V3 §2.1, §8.2).
            return errors.WechatFinal(text, wechat_code=code, status=status)
        # A final error closes a payment or makes a query "no such order", so it must be WeChat's own: an
        # unsigned one (a proxy's 404, a captive portal's redirect) or a forged one says nothing about the order.
        try:
            crypto.verify_signed_message(headers, raw, self._platform_keys, now=self._now())
        except crypto.CryptoError as exc:
            log.warning("wechat.error_unverified", endpoint=endpoint, status=status, error=str(exc))
            return errors.WechatRetryable(f"{text} (unverified: {exc})", wechat_code=code, status=status)
        return errors.WechatFinal(text, wechat_code=code, status=status)


def parse_transaction(body: Mapping[str, Any]) -> Transaction:
    """A query answer or decrypted notification resource → `Transaction`."""
    amount = body.get("amount") if isinstance(body.get("amount"), dict) else {}
    success_time = body.get("success_time")
    parsed_time = None
    if isinstance(success_time, str) and success_time:
        try:
            parsed_time = dt.datetime.fromisoformat(success_time)
        except ValueError:
            raise errors.WechatRetryable(f"unreadable success_time {success_time!r}") from None
    trade_state = body.get("trade_state")
    out_trade_no = body.get("out_trade_no")
    if not isinstance(trade_state, str) or not isinstance(out_trade_no, str):
        raise errors.WechatRetryable("transaction lacks trade_state or out_trade_no")
    total = amount.get("total")  # type: ignore[union-attr]
    payer_total = amount.get("payer_total")  # type: ignore[union-attr]
    return Transaction(
        out_trade_no=out_trade_no,
        trade_state=trade_state,
        transaction_id=body.get("transaction_id") or None,
        amount=total if isinstance(total, int) and not isinstance(total, bool) else None,
        payer_total=payer_total if isinstance(payer_total, int) and not isinstance(payer_total, bool) else None,
        success_time=parsed_time,
        mchid=body.get("mchid"),
        appid=body.get("appid"),
        raw=dict(body),
    )


def parse_refund(body: Mapping[str, Any]) -> RefundAnswer:
    """A refund answer (`status`) or decrypted refund notification resource (`refund_status`) → `RefundAnswer`."""
    status = body.get("status", body.get("refund_status"))
    out_refund_no = body.get("out_refund_no")
    if not isinstance(status, str) or status not in REFUND_STATUSES or not isinstance(out_refund_no, str):
        raise errors.WechatRetryable("refund lacks a known status or out_refund_no")
    amount = body.get("amount") if isinstance(body.get("amount"), dict) else {}
    success_time = body.get("success_time")
    parsed_time = None
    if isinstance(success_time, str) and success_time:
        try:
            parsed_time = dt.datetime.fromisoformat(success_time)
        except ValueError:
            raise errors.WechatRetryable(f"unreadable success_time {success_time!r}") from None

    def fen(name: str) -> int | None:
        value = amount.get(name)  # type: ignore[union-attr]
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def text(name: str) -> str | None:
        value = body.get(name)
        return value if isinstance(value, str) and value else None

    return RefundAnswer(out_refund_no=out_refund_no, status=status, out_trade_no=text("out_trade_no"),
                        refund_id=text("refund_id"), amount=fen("refund"), total=fen("total"), success_time=parsed_time,
                        mchid=text("mchid"), raw=dict(body))


def _dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise errors.SettingsError(f"cannot read {path!r}: {exc.strerror}") from None
