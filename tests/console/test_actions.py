"""The operator actions from the payment page: each a POST with a note, through the admin API's service call,
leaving an event with source `admin`; one that does not apply, or has no note, is a 4xx page that changes nothing."""

from __future__ import annotations

from payflow.backend import Delivery
from payflow.states import State
from tests.console.conftest import Console

NOTE = "payer called, says paid at 10:02"


async def _state(console: Console, no: str) -> State:
    return (await console.service.get_payment(no)).state


async def _paid_while_the_backend_fails(console: Console, order_id: str) -> str:
    """Paid (found by a recheck) but the backend answers 503: `notified`, the first forward failed."""
    no = await console.create(order_id)
    console.wechat.paid.add(no)
    console.backend.answer = Delivery("retry", 503, "maintenance")
    await console.service.operate(no, "recheck", "set-up")
    await console.service.drain()
    assert await _state(console, no) is State.NOTIFIED
    return no


async def _rejected_by_the_backend(console: Console, order_id: str) -> str:
    no = await console.create(order_id)
    console.wechat.paid.add(no)
    console.backend.answer = Delivery("rejected", 409, '{"error": "order cancelled"}')
    await console.service.operate(no, "recheck", "set-up")
    await console.service.drain()
    assert await _state(console, no) is State.NEEDS_REVIEW
    return no


async def test_recheck_pays_with_source_admin(console: Console) -> None:
    no = await console.create("order-1")
    console.wechat.paid.add(no)  # paid at WeChat; the notification never came
    await console.sign_in()
    response = await console.post(f"/console/payments/{no}/recheck", note=NOTE)
    assert response.status == 303 and response.headers["Location"] == f"/console/payments/{no}"
    await console.service.drain()
    events = await console.service.timeline(no)
    assert [(e.trigger, e.source) for e in events][-3:] == [("recheck", "admin"), ("pay", "admin"), ("sync", "backend")]
    assert events[-3].detail == {"note": NOTE}
    page = await console.client.get(f"/console/payments/{no}")
    html = await page.text()
    assert page.status == 200 and '<p class="flash" role="status"><strong>recheck</strong>: accepted' in html
    assert '<span class="paid">paid</span>' in html and NOTE in html
    again = await console.client.get(f"/console/payments/{no}")  # the outcome is shown once
    assert 'class="flash"' not in await again.text()


async def test_resend_delivers_the_paid_event_now(console: Console) -> None:
    no = await _paid_while_the_backend_fails(console, "order-1")
    console.backend.answer = Delivery("acked", 200, "ok")
    await console.sign_in()
    response = await console.post(f"/console/payments/{no}/resend", note="backend is back")
    assert response.status == 303
    assert (await console.events(no))[-2:] == [("resend", "admin"), ("sync", "backend")]
    page = await (await console.client.get(f"/console/payments/{no}")).text()
    assert "<strong>resend</strong>: acknowledged" in page


async def test_requeue_from_review_delivers_again(console: Console) -> None:
    no = await _rejected_by_the_backend(console, "order-1")
    console.backend.answer = Delivery("acked", 200, "ok")
    await console.sign_in()
    response = await console.post(f"/console/payments/{no}/requeue", note="order restored at the backend")
    assert response.status == 303
    assert (await console.events(no))[-2:] == [("requeue", "admin"), ("sync", "backend")]
    assert await _state(console, no) is State.SYNCED


async def test_dismiss_closes_a_payment_in_review(console: Console) -> None:
    no = await _rejected_by_the_backend(console, "order-1")
    await console.sign_in()
    response = await console.post(f"/console/payments/{no}/dismiss", note="refunded by hand")
    assert response.status == 303
    last = (await console.service.timeline(no))[-1]
    assert (last.trigger, last.source, last.detail["note"]) == ("dismiss", "admin", "refunded by hand")
    assert await _state(console, no) is State.CLOSED


async def test_an_action_that_does_not_apply_is_a_409_page(console: Console) -> None:
    no = await console.create("order-1")
    await console.sign_in()
    for action in ("resend", "requeue", "dismiss"):
        response = await console.post(f"/console/payments/{no}/{action}", note=NOTE)
        html = await response.text()
        assert response.status == 409 and f"{action} does not apply to a payment that is prepaid" in html
        assert f'href="/console/payments/{no}"' in html  # back to the payment
    assert await console.events(no) == [("create", "api"), ("prepay", "api")]


async def test_an_action_needs_a_note(console: Console) -> None:
    no = await console.create("order-1")
    console.wechat.paid.add(no)
    await console.sign_in()
    for fields, message in (({}, "note is required"), ({"note": "  "}, "note must not be empty"),
                            ({"note": "x" * 501}, "at most 500 characters"),
                            ({"note": "two\nlines"}, "control or bidirectional")):
        response = await console.post(f"/console/payments/{no}/recheck", **fields)
        assert response.status == 422 and message in await response.text(), fields
    assert await console.events(no) == [("create", "api"), ("prepay", "api")]


async def test_no_action_is_taken_by_a_get(console: Console) -> None:
    no = await console.create("order-1")
    console.wechat.paid.add(no)
    await console.sign_in()
    for path in (f"/console/payments/{no}/recheck", f"/console/payments/{no}/recheck?note=x",
                 f"/console/payments/{no}"):
        response = await console.client.get(path, allow_redirects=False)
        assert response.status in (200, 405), path
    assert await console.events(no) == [("create", "api"), ("prepay", "api")]
    assert await _state(console, no) is State.PREPAID  # the page does not query WeChat on read either


async def test_unknown_payments_and_actions_are_4xx_pages(console: Console) -> None:
    await console.sign_in()
    response = await console.post("/console/payments/PF000000000000/recheck", note=NOTE)
    assert response.status == 404 and "no payment with out_trade_no" in await response.text()
    response = await console.post("/console/payments/PF000000000000/refund", note=NOTE)
    assert response.status == 404
    response = await console.post("/console/payments/bad%20no/recheck", note=NOTE)
    assert response.status == 422
