"""The operator console: server-rendered pages under /console/ over the same service calls as the admin API.

A sub-application, so its one middleware (HTML errors, the sign-in gate, CSRF, security headers) covers
exactly its paths; `create_app` mounts it unless PAYFLOW_CONSOLE=off. Templates and static files are package
data read with importlib.resources, so an installed wheel serves them as a checkout does.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources

import aiohttp_jinja2
import jinja2
from aiohttp import web

from payflow.clock import SHANGHAI
from payflow.console import forms, guard, pages, sessions
from payflow.http import keys
from payflow.service import operating

_STATIC_TYPES = {"console.css": "text/css", "console.js": "text/javascript"}


def setup(app: web.Application) -> None:
    """Mount the console on `app` at /console/."""
    console = web.Application(middlewares=[guard.console_middleware])
    admin_token = app[keys.SETTINGS].admin_token
    if admin_token:
        console[guard.SIGNER] = sessions.Signer.for_token(admin_token)
    environment = aiohttp_jinja2.setup(
        console, loader=jinja2.PackageLoader("payflow.console", "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, default_helpers=False, trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(when=when, fen=fen)
    environment.globals.update(ago=ago)
    router = console.router
    router.add_get("/", pages.overview)
    router.add_get("/search", pages.search)
    router.add_get("/payments", pages.listing)
    router.add_get("/payments/{out_trade_no}", pages.payment)
    router.add_post(f"/payments/{{out_trade_no}}/{{action:{'|'.join(operating.ACTIONS)}}}", forms.action)
    router.add_get("/discrepancies", pages.discrepancies)
    router.add_get("/sign-in", pages.sign_in_form)
    router.add_post("/sign-in", forms.sign_in)
    router.add_post("/sign-out", forms.sign_out)
    for name, content_type in _STATIC_TYPES.items():
        router.add_get(f"/static/{name}", _static(name, content_type))
    app.add_subapp("/console", console)


def _static(name: str, content_type: str) -> guard.Handler:
    body = importlib.resources.files("payflow.console").joinpath("static", name).read_bytes()

    @guard.access(guard.Access.STATIC)
    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8",
                            headers={"Cache-Control": "max-age=300"})

    return serve


def when(moment: dt.datetime | None) -> str:
    """A time as WeChat and the merchant platform show it: Asia/Shanghai, to the second."""
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S +08:00") if moment is not None else "—"


def ago(moment: dt.datetime | None, now: dt.datetime) -> str:
    """`3m 05s ago`, `in 40s`: how far `moment` is from now."""
    if moment is None:
        return ""
    seconds = int((now - moment).total_seconds())
    span = abs(seconds)
    if span < 60:
        text = f"{span}s"
    elif span < 3600:
        text = f"{span // 60}m {span % 60:02d}s"
    elif span < 86400:
        text = f"{span // 3600}h {span % 3600 // 60:02d}m"
    else:
        text = f"{span // 86400}d {span % 86400 // 3600}h"
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def fen(amount: int | None, currency: str = "CNY") -> str:
    """An amount in fen as yuan: 1999 → `19.99 CNY`."""
    if amount is None:
        return "—"
    sign = "-" if amount < 0 else ""
    return f"{sign}{abs(amount) // 100}.{abs(amount) % 100:02d} {currency}"
