"""A fake of the `WechatApi` interface for tests of the service and HTTP layers.

It records what it was asked and answers what the test scripts; it is not a WeChat simulator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from payflow import errors
from payflow.wechat.api import JsapiOrder, Transaction


@dataclasses.dataclass
class FakeWechat:
    placed: list[JsapiOrder] = dataclasses.field(default_factory=list)
    # Each call pops the next scripted outcome: a prepay_id, or an exception to raise.
    outcomes: list[str | Exception] = dataclasses.field(default_factory=list)
    before_answer: Callable[[], object] | None = None

    async def place_jsapi(self, order: JsapiOrder) -> str:
        self.placed.append(order)
        if self.before_answer is not None:
            await self.before_answer()  # type: ignore[misc]
        outcome = self.outcomes.pop(0) if self.outcomes else f"wx_prepay_{order.out_trade_no}"
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def query(self, out_trade_no: str) -> Transaction | None:
        raise errors.WechatRetryable("FakeWechat.query is not scripted")

    async def close_order(self, out_trade_no: str) -> None:
        raise errors.WechatRetryable("FakeWechat.close_order is not scripted")

    def pay_params(self, prepay_id: str) -> dict[str, str]:
        return {"appId": "wx-test", "timeStamp": "1700000000", "nonceStr": "n", "package": f"prepay_id={prepay_id}",
                "signType": "RSA", "paySign": "fake-signature"}
