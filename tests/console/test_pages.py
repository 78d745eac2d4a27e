"""The console's pages: the figures they show come from the admin API's calls; every value is escaped; every
answer carries the strict CSP; bad input is a clear 4xx page, never a traceback."""

from __future__ import annotations

import datetime as dt
import html
import re

import pytest

from payflow import console as console_module
from payflow import models
from payflow.backend import Delivery
from tests.console.conftest import Console

SCRIPT = "<script>alert(1)</script>"
HOSTILE = {"attach": SCRIPT, "openid": 'o"><img src=x onerror=alert(2)>',
           "description": "Beans </td></tr><b onmouseover=alert(3)>x</b>"}


def _text(page: str) -> str:
    """The page's text, tags dropped and whitespace folded (for asserting on what an operator reads)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


async def test_hostile_values_render_inert(console: Console) -> None:
    no = await console.create("order-<script>", **HOSTILE)
    console.wechat.paid.add(no)
    console.backend.answer = Delivery("rejected", 422, '<script>alert(4)</script>{"error": "<i>no</i>"}')
    await console.service.operate(no, "recheck", "<script>alert(5)</script>")
    await console.service.drain()
    await console.sign_in()
    for path in (f"/console/payments/{no}", "/console/", "/console/payments?state=needs_review"):
        page = await (await console.client.get(path)).text()
        assert "<script>alert" not in page and "<img" not in page and "<b " not in page and "<i>" not in page
        assert "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")  # only as escaped text
    page = await (await console.client.get(f"/console/payments/{no}")).text()
    assert html.escape(SCRIPT) in page  # shown as text: the operator sees exactly what the payer sent
    assert html.escape("<script>alert(4)</script>") in page and html.escape("<script>alert(5)</script>") in page
    assert re.findall(r"<script[^>]*>", page) == []  # this page loads no script at all
    search = await console.client.get("/console/search", params={"q": '"><script>alert(6)</script>'})
    assert search.status == 404 and "<script>alert" not in await search.text()


async def test_the_payment_page_shows_the_view_timeline_and_schedule(console: Console) -> None:
    no = await console.create("order-1", attach="table 7")
    console.wechat.paid.add(no)
    console.backend.answer = Delivery("retry", 503, "backend restarting")
    await console.service.operate(no, "recheck", "payer called")
    await console.service.drain()
    console.backend.answer = Delivery("rejected", 409, '{"error": "order cancelled"}')
    await console.service.operate(no, "resend", "try again")
    await console.sign_in()
    page = _text(await (await console.client.get(f"/console/payments/{no}")).text())
    assert f"{no} needs_review not paid" in page
    assert "order_id order-1 amount 19.99 CNY (1999 fen)" in page and "attach table 7" in page
    assert f"transaction_id 4200{no}" in page
    # the timeline: every event, source and detail
    assert f"prepaid → notified pay admin amount 1999 payer_total 1999 transaction_id 4200{no}" in page
    assert "prepaid → prepaid recheck admin note payer called" in page
    assert 'notified → needs_review flag backend attempt 2 body {"error": "order cancelled"} event_id' in page
    # the deliveries, with the backend's answer
    assert 'Deliveries to the backend time attempt outcome backend\'s answer' in page
    assert '2 flag (backend) body {"error": "order cancelled"} reason backend_rejected status 409' in page
    assert "None: the sweeper does not visit a payment that is needs_review." in page


async def test_the_payment_page_names_the_next_attempt(console: Console) -> None:
    no = await console.create("order-1")
    await console.sign_in()
    page = _text(await (await console.client.get(f"/console/payments/{no}")).text())
    payment = await console.service.get_payment(no)
    assert payment.next_attempt_at is not None
    assert f"Next scheduled attempt {console_module.when(payment.next_attempt_at)} (in 30s)" in page
    assert console_module.when(payment.next_attempt_at).endswith(":30 +08:00")
    assert "query WeChat (paid yet?), or close at WeChat once expired; attempts so far: 0." in page
    assert "WeChat has sent no notification about this payment." in page


async def test_the_overview_shows_the_admin_apis_figures(console: Console) -> None:
    late = await console.create("order-late", expires_in=600)
    console.clock.advance(10)
    review = await console.create("order-review")
    console.wechat.paid.add(review)
    console.backend.answer = Delivery("rejected", 410, "gone")
    await console.service.operate(review, "recheck", "set-up")
    await console.service.drain()
    await console.create("order-fresh")
    console.clock.advance(601)  # `late` expired unclosed: stuck
    day = (console.clock.now() + dt.timedelta(hours=8)).date() - dt.timedelta(days=1)
    store = console.service.store
    run = await store.start_reconciliation(day, console.clock.now())
    assert run is not None
    await store.finish_reconciliation(run, status="discrepancies", counts={"lines": 3, "matched": 2},
                                      at=console.clock.now())
    await store.add_discrepancy(models.Discrepancy(day, "PF_SOMEONE_ELSE", "PLATFORM_MISS", {"amount": 5},
                                                   console.clock.now()))
    await console.sign_in()
    response = await console.client.get("/console/")
    page = _text(await response.text())
    assert 'data-refresh="15"' in await response.text()
    assert "3 payments 1 stuck 1 need review" in page
    assert "created 0 prepaid 2 notified 0 synced 0 reconciled 0 closed 0 needs_review 1" in page
    listing = await console.service.list_payments(state="stuck", limit=20, cursor=None)
    assert [p.out_trade_no for p in listing.payments] == [late]
    assert (f"Stuck — past their first deadline, oldest first out_trade_no order_id state missed amount created "
            f"next attempt attempts {late} order-late prepaid expired 11s ago, not closed 19.99 CNY") in page
    assert f"{review} order-review 19.99 CNY backend_rejected" in page
    assert f"Reconciliation of {day.isoformat()} Last run: discrepancies" in page and "lines 3 · matched 2" in page
    assert "1 discrepancy" in page


async def test_discrepancies_by_date(console: Console) -> None:
    day = dt.date(2026, 11, 25)
    await console.service.store.add_discrepancy(models.Discrepancy(
        day, "PF_NOT_OURS_01", "PLATFORM_MISS", {"amount": 1999, "note": "<b>x</b>"}, console.clock.now()))
    await console.sign_in()
    page = await (await console.client.get("/console/discrepancies?date=2026-11-25")).text()
    assert "PF_NOT_OURS_01" in page and "PLATFORM_MISS" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert 'href="/console/discrepancies?date=2026-11-24"' in page and "This day has not been reconciled" in page
    other = await (await console.client.get("/console/discrepancies?date=2026-11-24")).text()
    assert "PF_NOT_OURS_01" not in other
    default = await (await console.client.get("/console/discrepancies")).text()
    assert "Discrepancies of 2026-11-25" in default  # yesterday in Shanghai: the bill today's run works on


async def test_search_by_out_trade_no_order_id_or_transaction_id(console: Console) -> None:
    no = await console.create("shop-order-77")
    await console.sign_in()
    for q in (no, "shop-order-77", f"  {no} "):
        response = await console.client.get("/console/search", params={"q": q}, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == f"/console/payments/{no}", q
    console.wechat.paid.add(no)
    await console.service.operate(no, "recheck", "payer says paid")  # WeChat's transaction id is known now
    response = await console.client.get("/console/search", params={"q": f"4200{no}"}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == f"/console/payments/{no}"
    response = await console.client.get("/console/search", params={"q": "nobody-ordered-this"})
    assert response.status == 404
    assert "No payment has the out_trade_no, order_id or transaction_id" in await response.text()
    assert (await console.client.get("/console/search")).status == 200


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/console/payments/bad!", 422, "out_trade_no must be 6-32 characters"),
    ("/console/payments/PF0000000000000000", 404, "no payment with out_trade_no"),
    ("/console/payments?state=paid", 422, "state must be one of"),
    ("/console/payments?limit=0", 422, "limit must be an integer"),
    ("/console/payments?state=stuck&cursor=bm9wZQ", 422, "cursor is not one this API handed out"),
    ("/console/discrepancies?date=2026-13-01", 422, "is not YYYY-MM-DD"),
    ("/console/discrepancies?date=0001-01-01", 200, "Discrepancies of 0001-01-01"),
    ("/console/search?q=a%00b", 422, "control characters"),
    ("/console/search?q=" + "x" * 129, 422, "at most 128 characters"),
    ("/console/no-such-page", 404, "There is no such console page."),
])
async def test_bad_input_is_a_clear_4xx_page(console: Console, path: str, status: int, message: str) -> None:
    await console.sign_in()
    response = await console.client.get(path)
    page = await response.text()
    assert response.status == status and message in html.unescape(page)
    assert response.content_type == "text/html" and "Traceback" not in page


async def test_a_crash_is_a_500_page_without_a_trace(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals /var/lib/payflow")

    monkeypatch.setattr("payflow.console.figures.overview", broken)
    await console.sign_in()
    response = await console.client.get("/console/")
    page = await response.text()
    assert response.status == 500 and "Internal error" in page
    assert "secret internals" not in page and "Traceback" not in page and "Request id" in page


async def test_every_answer_carries_the_security_headers(console: Console) -> None:
    no = await console.create("order-1")
    answers = [await console.client.get("/console/", allow_redirects=False),  # redirect to sign-in
               await console.client.get("/console/sign-in"),
               await console.client.post("/console/sign-in", data={}),  # 403
               await console.client.get("/console/static/console.css"),
               await console.client.get("/console/static/console.js")]
    await console.sign_in()
    answers += [await console.client.get(path) for path in (
        "/console/", f"/console/payments/{no}", "/console/payments", "/console/discrepancies", "/console/search",
        "/console/payments/nope!", "/console/nowhere")]
    answers.append(await console.post(f"/console/payments/{no}/dismiss", note="x"))  # 409
    for response in answers:
        assert response.headers["Content-Security-Policy"] == (
            "default-src 'none'; style-src 'self'; script-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"), response.url
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    pages = [r for r in answers if r.content_type == "text/html"]
    assert pages and all(r.headers["Cache-Control"] == "no-store" for r in pages)
    assert all(r.headers["X-Request-Id"] for r in answers)


async def test_static_files_are_served_with_their_types(console: Console) -> None:
    css = await console.client.get("/console/static/console.css")
    js = await console.client.get("/console/static/console.js")
    assert (css.status, css.content_type) == (200, "text/css") and ".panel" in await css.text()
    assert (js.status, js.content_type) == (200, "text/javascript") and "data-refresh" in await js.text()
    assert (await console.client.get("/console/static/other.js")).status == 404


async def test_pages_link_no_outside_resource(console: Console) -> None:
    """No CDN, no web font: every src and href is this console's own (the console works offline)."""
    no = await console.create("order-1")
    await console.sign_in()
    for path in ("/console/", f"/console/payments/{no}", "/console/payments", "/console/discrepancies"):
        page = await (await console.client.get(path)).text()
        for link in re.findall(r'(?:src|href|action)="([^"]*)"', page):
            assert link.startswith("/console/"), (path, link)
        assert 'style="' not in page and re.search(r"<script>", page) is None  # nothing inline for the CSP to block


async def test_the_payment_page_offers_the_actions_that_apply(console: Console) -> None:
    prepaid = await console.create("order-1")
    console.wechat.paid.add(review := await console.create("order-2"))
    console.backend.answer = Delivery("rejected", 409, "cancelled")
    await console.service.operate(review, "recheck", "set-up")
    await console.service.drain()
    await console.sign_in()
    for no, offered, not_now in ((prepaid, ["recheck"], "Not while prepaid: resend, requeue, dismiss."),
                                 (review, ["requeue", "dismiss"], "Not while needs_review: recheck, resend.")):
        page = await (await console.client.get(f"/console/payments/{no}")).text()
        assert re.findall(r'<button type="submit" name="action" value="(\w+)">', page) == offered
        assert not_now in page


async def test_the_bare_console_path_leads_to_the_console(console: Console) -> None:
    response = await console.client.get("/console", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/console/"


async def test_the_payment_page_shows_each_refund_with_its_timeline(console: Console) -> None:
    from payflow.service import NewRefund

    no = await console.create("order-1")
    console.wechat.paid.add(no)
    await console.service.operate(no, "recheck", "payer called")
    await console.service.drain()  # paid, forwarded, synced
    await console.service.create_refund(NewRefund(no, 500, reason="damaged", out_refund_no="R-1"))
    await console.sign_in()
    page = _text(await (await console.client.get(f"/console/payments/{no}")).text())
    assert "Refunds — each with its own timeline" in page
    assert "R-1 · 5.00 (500 fen) · processing · api" in page
    assert "WeChat refund 5030R-1" in page
    assert "created → processing accept api" in page
