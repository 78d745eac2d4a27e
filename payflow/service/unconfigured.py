"""Null collaborators for a deployment that lacks WeChat Pay keys, a backend or a notify URL: each call
raises `errors.NotConfigured` naming what to set, so a part never checks for None."""

from __future__ import annotations

from collections.abc import Mapping

from payflow import errors, models
from payflow.backend import Delivery
from payflow.wechat.api import Order, Placed, RefundAnswer, RefundRequest, Transaction
from payflow.wechat.notify import VerifiedNotification

WECHAT_VARIABLES = ("PAYFLOW_WECHAT_MCHID, PAYFLOW_WECHAT_APPID, PAYFLOW_WECHAT_MCH_SERIAL, "
                    "PAYFLOW_WECHAT_MCH_KEY_FILE, PAYFLOW_WECHAT_PUBKEY_ID and PAYFLOW_WECHAT_PUBKEY_FILE")


class UnconfiguredWechat:
    """A `WechatApi` for a deployment without WeChat Pay keys."""

    def _refuse(self) -> errors.NotConfigured:
        return errors.NotConfigured(f"WeChat Pay is not configured: set {WECHAT_VARIABLES}")

    async def place(self, order: Order) -> Placed:
        raise self._refuse()

    async def query(self, out_trade_no: str, appid: str | None = None) -> Transaction | None:
        raise self._refuse()

    async def close_order(self, out_trade_no: str) -> None:
        raise self._refuse()

    def pay_params(self, prepay_id: str, appid: str | None = None) -> dict[str, str]:
        raise self._refuse()

    def app_params(self, prepay_id: str, appid: str | None = None) -> dict[str, str]:
        raise self._refuse()

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        raise self._refuse()

    async def query_refund(self, out_refund_no: str) -> RefundAnswer | None:
        raise self._refuse()


class UnconfiguredBackend:
    """A `Backend` for a deployment without PAYFLOW_BACKEND_URL / PAYFLOW_BACKEND_SECRET."""

    async def deliver(self, payment: models.Payment) -> Delivery:
        raise self._refuse()

    async def send(self, event_id: str, body: bytes) -> Delivery:
        raise self._refuse()

    def _refuse(self) -> errors.NotConfigured:
        return errors.NotConfigured(
            "the business backend is not configured: set PAYFLOW_BACKEND_URL and PAYFLOW_BACKEND_SECRET")


class UnconfiguredVerifier:
    """A `NotificationVerifier` for a deployment without the WeChat Pay public key or the APIv3 key."""

    def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedNotification:
        raise errors.NotConfigured("notifications cannot be verified: set PAYFLOW_WECHAT_PUBKEY_ID, "
                                   "PAYFLOW_WECHAT_PUBKEY_FILE and PAYFLOW_WECHAT_APIV3_KEY")
