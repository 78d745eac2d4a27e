"""A fake of the `WechatApi` interface for tests of the service and HTTP layers.

It records what it was asked and answers what the test scripts; it is not a WeChat simulator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from payflow import errors
from payflow.wechat.api import Order, Placed, RefundAnswer, RefundRequest, Transaction


@dataclasses.dataclass
class FakeWechat:
    placed: list[Order] = dataclasses.field(default_factory=list)
    # Each call pops the next scripted outcome: a prepay_id (or a code_url/h5_url for those products), or an
    # exception to raise.
    outcomes: list[str | Exception] = dataclasses.field(default_factory=list)
    before_answer: Callable[[], object] | None = None
    refunds: list[RefundRequest] = dataclasses.field(default_factory=list)
    # Each refund call pops the next scripted outcome: a status to answer, or an exception to raise.
    refund_outcomes: list[str | Exception] = dataclasses.field(default_factory=list)

    async def place(self, order: Order) -> Placed:
        self.placed.append(order)
        if self.before_answer is not None:
            await self.before_answer()  # type: ignore[misc]
        default = {"native": f"weixin://wxpay/bizpayurl?pr={order.out_trade_no}",
                   "h5": f"https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={order.out_trade_no}"}
        outcome = self.outcomes.pop(0) if self.outcomes else default.get(order.api, f"wx_prepay_{order.out_trade_no}")
        if isinstance(outcome, Exception):
            raise outcome
        return Placed(**{{"native": "code_url", "h5": "h5_url"}.get(order.api, "prepay_id"): outcome})

    async def query(self, out_trade_no: str, appid: str | None = None) -> Transaction | None:
        raise errors.WechatRetryable("FakeWechat.query is not scripted")

    async def close_order(self, out_trade_no: str) -> None:
        raise errors.WechatRetryable("FakeWechat.close_order is not scripted")

    def app_params(self, prepay_id: str, appid: str | None = None) -> dict[str, str]:
        return {"appid": appid or "wx-test", "partnerid": "1900000001", "prepayid": prepay_id, "package": "Sign=WXPay",
                "noncestr": "n", "timestamp": "1700000000", "sign": "fake-signature"}

    def pay_params(self, prepay_id: str, appid: str | None = None) -> dict[str, str]:
        return {"appId": appid or "wx-test", "timeStamp": "1700000000", "nonceStr": "n",
                "package": f"prepay_id={prepay_id}", "signType": "RSA", "paySign": "fake-signature"}

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        self.refunds.append(request)
        outcome = self.refund_outcomes.pop(0) if self.refund_outcomes else "PROCESSING"
        if isinstance(outcome, Exception):
            raise outcome
        return RefundAnswer(out_refund_no=request.out_refund_no, status=outcome, out_trade_no=request.out_trade_no,
                            refund_id=f"5030{request.out_refund_no}", amount=request.amount, total=request.total)

    async def query_refund(self, out_refund_no: str) -> RefundAnswer | None:
        raise errors.WechatRetryable("FakeWechat.query_refund is not scripted")
