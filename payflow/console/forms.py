"""The console's forms (POST; the middleware has checked their CSRF token): sign in, sign out, and the
operator actions, which go through the same service call as `POST /v1/admin/payments/{no}/{action}`."""

from __future__ import annotations

from aiohttp import web

from payflow.console import pages, sessions
from payflow.console.guard import SESSION, Access, access, redirect, safe_next, service, signer
from payflow.http import keys, payloads


@access(Access.SIGN_IN)
async def sign_in(request: web.Request) -> web.Response:
    form = await request.post()
    token = form.get("token")
    admin_token = request.config_dict[keys.SETTINGS].admin_token or ""
    if not isinstance(token, str) or not sessions.token_matches(admin_token, token.strip()):
        return pages.sign_in_page(request, next_page=form.get("next"), wrong=True)
    now = service(request).now()
    value = signer(request).sign("session", {"n": sessions.new_nonce()}, expires=now + sessions.SESSION_TTL)
    response = redirect(safe_next(form.get("next")))
    sessions.set_cookie(request, response, sessions.SESSION_COOKIE, value)  # no Max-Age: ends with the browser
    sessions.clear_cookie(request, response, sessions.PRE_COOKIE)
    return response


async def sign_out(request: web.Request) -> web.Response:
    response = redirect("/console/sign-in")
    sessions.clear_cookie(request, response, sessions.SESSION_COOKIE)
    return response


async def action(request: web.Request) -> web.Response:
    out_trade_no = payloads.out_trade_no(request.match_info["out_trade_no"])
    form = await request.post()
    note = payloads.note({"note": form.get("note")})  # the admin API's rule: required, at most 500 characters
    result = await service(request).operate(out_trade_no, request.match_info["action"], note)
    response = redirect(f"/console/payments/{out_trade_no}")
    message = {"action": result.action, "outcome": result.outcome, "state": result.payment.state.value}
    sessions.set_cookie(request, response, sessions.FLASH_COOKIE,
                        sessions.flash(signer(request), request[SESSION], out_trade_no, message,
                                       now=service(request).now()),
                        max_age=sessions.FLASH_TTL)
    return response
