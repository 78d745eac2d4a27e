"""The console's pages (GET, so they change nothing): overview, search, listing, payment, discrepancies,
and the sign-in form."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from payflow.console import figures, sessions
from payflow.console.guard import SESSION, Access, access, redirect, render, service, signer
from payflow.http import payloads
from payflow.service import STUCK
from payflow.states import State

OVERVIEW_REFRESH = 15  # seconds between the overview's reloads (console.js)
_DAY = dt.timedelta(days=1)


async def overview(request: web.Request) -> web.Response:
    found = await figures.overview(service(request))
    return render(request, "overview.html", {"o": found, "refresh": OVERVIEW_REFRESH, "title": "Overview"})


async def search(request: web.Request) -> web.Response:
    text = figures.search_text(request.query.get("q"))
    if not text:
        return render(request, "search.html", {"q": "", "title": "Search"})
    found = await figures.search(service(request), text)
    if found is not None:
        return redirect(f"/console/payments/{found.out_trade_no}")
    return render(request, "search.html", {"q": text, "title": "Search", "missing": True}, status=404)


async def listing(request: web.Request) -> web.Response:
    state, limit, cursor = payloads.listing(request.query)  # the admin API's parameters, checked alike
    page = await service(request).list_payments(state=state, limit=limit, cursor=cursor)
    return render(request, "payments.html", {"page": page, "state": state, "limit": limit, "stuck": state == STUCK,
                                             "states": [STUCK, *(s.value for s in State)],
                                             "title": f"Payments: {state}" if state else "Payments"})


async def payment(request: web.Request) -> web.Response:
    out_trade_no = payloads.out_trade_no(request.match_info["out_trade_no"])
    page = await figures.payment_page(service(request), out_trade_no)
    flash = sessions.read_flash(signer(request), request[SESSION], out_trade_no,
                                request.cookies.get(sessions.FLASH_COOKIE), now=service(request).now())
    response = render(request, "payment.html", {"p": page, "flash": flash, "title": out_trade_no,
                                                "detail_items": figures.detail_items})
    if sessions.FLASH_COOKIE in request.cookies:
        sessions.clear_cookie(request, response, sessions.FLASH_COOKIE)
    return response


async def discrepancies(request: web.Request) -> web.Response:
    raw = request.query.get("date")
    day = payloads.date_param(raw) if raw else figures.latest_bill_date(service(request).now())
    found = await figures.reconciliation(service(request), day)
    return render(request, "discrepancies.html", {
        "r": found, "previous": day - _DAY if day > dt.date.min else day,
        "following": day + _DAY if day < dt.date.max else day,
        "title": f"Discrepancies {day.isoformat()}", "detail_items": figures.detail_items})


@access(Access.SIGN_IN)
async def sign_in_form(request: web.Request) -> web.Response:
    return sign_in_page(request, next_page=request.query.get("next"))


def sign_in_page(request: web.Request, *, next_page: object, wrong: bool = False) -> web.Response:
    """The form, with a fresh sign-in cookie that its CSRF token is bound to."""
    nonce = sessions.new_nonce()
    now = service(request).now()
    response = render(request, "sign_in.html", {"sign_in_csrf": signer(request).csrf(nonce), "wrong": wrong,
                                                "next": next_page if isinstance(next_page, str) else "",
                                                "title": "Sign in"}, status=401 if wrong else 200)
    sessions.set_cookie(request, response, sessions.PRE_COOKIE,
                        signer(request).sign("sign-in", {"n": nonce}, expires=now + sessions.PRE_TTL),
                        max_age=sessions.PRE_TTL)
    return response
