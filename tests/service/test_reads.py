"""Reads: the payer's status poll and its query-on-read bookkeeping."""

from __future__ import annotations

import asyncio
import dataclasses

from payflow.service import NewPayment, PaymentService
from payflow.service.reads import Reads
from payflow.states import State
from payflow.wechat.api import Transaction
from tests.fakes import FakeWechat


@dataclasses.dataclass
class StuckWechat(FakeWechat):
    """Every query waits for `release`, as queries stuck behind a busy limiter do."""

    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    asked: list[str] = dataclasses.field(default_factory=list)
    waiting: asyncio.Queue[str] = dataclasses.field(default_factory=asyncio.Queue)

    async def query(self, out_trade_no: str, appid: str | None = None) -> Transaction | None:
        self.asked.append(out_trade_no)
        self.waiting.put_nowait(out_trade_no)
        await self.release.wait()
        return Transaction(out_trade_no=out_trade_no, trade_state="NOTPAY")


async def test_query_on_read_bookkeeping_stays_bounded_while_queries_are_stuck(
    service: PaymentService, wechat: FakeWechat,
) -> None:
    numbers = []
    for i in range(5):
        created = await service.create_payment(NewPayment(order_id=f"order-{i}", amount=100, description="Beans",
                                                          openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"))
        assert created.payment.state is State.PREPAID
        numbers.append(created.payment.out_trade_no)
    stuck = StuckWechat()
    reads = Reads(service.core, stuck, service.paid, queries_kept=3)
    polls = []
    for no in numbers:  # one poll at a time, each until its query is under way (and stuck)
        polls.append(asyncio.get_running_loop().create_task(reads.view_payment(no)))
        assert await asyncio.wait_for(stuck.waiting.get(), 5) == no
    assert reads.queries_tracked == 3  # none finished, yet only the three most recent are kept
    stuck.release.set()
    for payment in await asyncio.gather(*polls):
        assert payment.state is State.PREPAID
    # Within the query interval, a kept payment's poll shares the answer; a forgotten one asks again.
    await reads.view_payment(numbers[-1])
    await reads.view_payment(numbers[0])
    assert stuck.asked == [*numbers, numbers[0]]
    assert reads.queries_tracked == 3
