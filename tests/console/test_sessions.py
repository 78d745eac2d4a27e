"""Signing in to the console: the admin token once, then a signed, expiring, HttpOnly, SameSite=Strict session
cookie; CSRF tokens on every form; and no console at all without an admin token or with PAYFLOW_CONSOLE=off."""

from __future__ import annotations

import datetime as dt
import ssl
from http.cookies import SimpleCookie

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from payflow import errors
from payflow.console import guard, sessions
from payflow.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.console.conftest import Console, csrf_of
from tests.factories import T0


def _set_cookie(response: object, name: str) -> SimpleCookie:
    headers = response.headers.getall("Set-Cookie", [])  # type: ignore[attr-defined]
    jar: SimpleCookie = SimpleCookie()
    for header in headers:
        if header.startswith(f"{name}="):
            jar.load(header)
    assert name in jar, f"no Set-Cookie for {name} in {headers}"
    return jar


async def test_signing_in_with_the_admin_token_opens_the_console(console: Console) -> None:
    page = await console.client.get("/console/", allow_redirects=False)
    assert page.status == 303 and page.headers["Location"] == "/console/sign-in?next=/console/"

    form = await console.client.get("/console/sign-in")
    response = await console.client.post("/console/sign-in", allow_redirects=False, data={
        "csrf": csrf_of(await form.text()), "token": ADMIN_TOKEN, "next": "/console/payments?state=stuck"})
    assert response.status == 303 and response.headers["Location"] == "/console/payments?state=stuck"
    cookie = _set_cookie(response, sessions.SESSION_COOKIE)[sessions.SESSION_COOKIE]
    assert cookie["httponly"] is True and cookie["samesite"] == "Strict" and cookie["path"] == "/console/"
    assert not cookie["secure"]  # plain HTTP here; see test_the_cookie_is_secure_exactly_over_tls
    assert not cookie["max-age"] and not cookie["expires"]  # a browser-session cookie; its expiry is signed inside
    assert ADMIN_TOKEN not in cookie.value

    overview = await console.client.get("/console/")
    assert overview.status == 200 and "<h1>Overview</h1>" in await overview.text()


async def test_a_wrong_token_is_refused(console: Console) -> None:
    form = await console.client.get("/console/sign-in")
    for wrong in ("", "test-admin-toke", ADMIN_TOKEN + "x", "test-api-token"):
        response = await console.client.post("/console/sign-in", allow_redirects=False,
                                              data={"csrf": csrf_of(await form.text()), "token": wrong})
        assert response.status == 401 and "That is not the admin token." in await response.text()
        assert sessions.SESSION_COOKIE not in {c.key for c in console.client.session.cookie_jar}
        form = response  # each refusal hands out a fresh form
    assert (await console.client.get("/console/", allow_redirects=False)).status == 303


async def test_an_expired_session_must_sign_in_again(console: Console) -> None:
    assert await console.sign_in() == 303
    console.clock.advance(sessions.SESSION_TTL.total_seconds() - 1)
    assert (await console.client.get("/console/", allow_redirects=False)).status == 200
    console.clock.advance(1)
    response = await console.client.get("/console/payments", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/console/sign-in?next=")


async def test_a_tampered_or_foreign_cookie_is_refused(console: Console, settings: Settings) -> None:
    assert await console.sign_in() == 303
    jar = console.client.session.cookie_jar
    good = next(c.value for c in jar if c.key == sessions.SESSION_COOKIE)
    body, mac = good.split(".")
    expiry_pushed = sessions.Signer.for_token("another-token").sign(
        "session", {"n": "x"}, expires=T0 + dt.timedelta(days=365))
    sign_in_cookie = sessions.Signer.for_token(ADMIN_TOKEN).sign("sign-in", {"n": "x"},
                                                                 expires=T0 + dt.timedelta(hours=1))
    for forged in (body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + mac,  # the payload changed
                   body + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"),  # the MAC changed
                   body, f"{body}.{mac}.x", "", "garbage", expiry_pushed, sign_in_cookie):
        jar.update_cookies({sessions.SESSION_COOKIE: forged}, console.client.make_url("/console/"))
        response = await console.client.get("/console/", allow_redirects=False)
        assert response.status == 303, forged
    jar.update_cookies({sessions.SESSION_COOKIE: good}, console.client.make_url("/console/"))
    assert (await console.client.get("/console/", allow_redirects=False)).status == 200


async def test_forms_without_this_sessions_csrf_token_are_refused(console: Console) -> None:
    no = await console.create("order-1")
    console.wechat.paid.add(no)
    assert await console.sign_in() == 303
    other = sessions.Signer.for_token(ADMIN_TOKEN).csrf("another-session")
    for fields in ({}, {"csrf": ""}, {"csrf": "x"}, {"csrf": other}):
        response = await console.client.post(f"/console/payments/{no}/recheck", allow_redirects=False,
                                             data={"note": "the payer called", **fields})
        assert response.status == 403 and "security token" in await response.text()
    # JSON is not a form: no token can come with it
    response = await console.client.post(f"/console/payments/{no}/recheck", json={"note": "x", "csrf": other})
    assert response.status == 403
    # a cross-site form is refused even with the right token (belt and braces with SameSite=Strict)
    response = await console.client.post(f"/console/payments/{no}/recheck", headers={"Sec-Fetch-Site": "cross-site"},
                                         data={"note": "x", "csrf": await console.csrf()}, allow_redirects=False)
    assert response.status == 403 and "another site" in await response.text()
    assert await console.events(no) == [("create", "api"), ("prepay", "api")]  # nothing happened


async def test_the_sign_in_form_needs_its_own_token(console: Console) -> None:
    response = await console.client.post("/console/sign-in", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert response.status == 403 and "sign-in form has expired" in await response.text()
    form = await console.client.get("/console/sign-in")
    response = await console.client.post("/console/sign-in", data={"token": ADMIN_TOKEN, "csrf": "forged"},
                                         allow_redirects=False)
    assert response.status == 403
    console.clock.advance(sessions.PRE_TTL.total_seconds())
    response = await console.client.post("/console/sign-in", allow_redirects=False,
                                         data={"token": ADMIN_TOKEN, "csrf": csrf_of(await form.text())})
    assert response.status == 403 and "expired" in await response.text()


async def test_signing_out_ends_the_session(console: Console) -> None:
    assert await console.sign_in() == 303
    response = await console.post("/console/sign-out")
    assert response.status == 303 and response.headers["Location"] == "/console/sign-in"
    assert (await console.client.get("/console/", allow_redirects=False)).status == 303
    response = await console.client.get("/console/sign-out")
    assert response.status == 405 and response.headers["Allow"] == "POST"  # a form, never a link


async def test_sign_in_goes_on_to_console_pages_only(console: Console) -> None:
    for given, expected in (("/console/payments?state=stuck", "/console/payments?state=stuck"),
                            ("//evil.example/console/", "/console/"), ("https://evil.example/", "/console/"),
                            ("/console/\\evil", "/console/"), ("/v1/admin/payments", "/console/"), ("", "/console/")):
        assert guard.safe_next(given) == expected, given
    form = await console.client.get("/console/sign-in?next=//evil.example/")
    response = await console.client.post("/console/sign-in", allow_redirects=False, data={
        "csrf": csrf_of(await form.text()), "token": ADMIN_TOKEN, "next": "//evil.example/"})
    assert response.headers["Location"] == "/console/"


def test_the_cookie_is_secure_exactly_over_tls() -> None:
    tls = make_mocked_request("POST", "/console/sign-in", sslcontext=ssl.create_default_context())
    forwarded = make_mocked_request("POST", "/console/sign-in", headers={"X-Forwarded-Proto": "https",
                                                                        "Forwarded": "proto=https"})
    for request, secure in ((tls, True), (forwarded, False)):
        response = web.Response()
        sessions.set_cookie(request, response, sessions.SESSION_COOKIE, "v")
        cookie = response.cookies[sessions.SESSION_COOKIE]
        assert bool(cookie["secure"]) is secure and cookie["samesite"] == "Strict" and cookie["httponly"]


def test_the_cookie_key_comes_from_the_admin_token_and_is_not_it() -> None:
    one, other = sessions.Signer.for_token("token-one"), sessions.Signer.for_token("token-two")
    assert one.key != other.key and one.key != b"token-one"
    value = one.sign("session", {"n": "abc"}, expires=T0 + dt.timedelta(seconds=10))
    assert one.unsign("session", value, now=T0) == {"n": "abc"}
    assert one.unsign("session", value, now=T0 + dt.timedelta(seconds=10)) is None  # expired
    assert other.unsign("session", value, now=T0) is None
    assert one.unsign("flash", value, now=T0) is None  # signed for another purpose
    assert one.csrf("abc") != one.csrf("abd") and one.csrf("abc") != other.csrf("abc")


@pytest.mark.parametrize("console_settings", [{"admin_token": None}], indirect=True)
async def test_without_an_admin_token_the_console_cannot_be_used(console: Console) -> None:
    for method, path in (("GET", "/console/sign-in"), ("POST", "/console/sign-in"), ("GET", "/console/"),
                         ("GET", "/console/payments")):
        response = await console.client.request(method, path, data={"token": ""}, allow_redirects=False)
        assert response.status == 503, path
        assert "PAYFLOW_ADMIN_TOKEN is not set" in await response.text()
    assert (await console.client.get("/console/static/console.css")).status == 200


@pytest.mark.parametrize("console_settings", [{"console": False}], indirect=True)
async def test_console_off_removes_the_routes(console: Console) -> None:
    for method, path in (("GET", "/console/"), ("GET", "/console/sign-in"), ("POST", "/console/sign-in"),
                         ("GET", "/console/static/console.css"), ("GET", "/console")):
        response = await console.client.request(method, path, allow_redirects=False)
        assert response.status == 404, path
        assert response.content_type == "application/json"  # the API's own 404: there is no console here
    assert (await console.client.get("/healthz")).status == 200


def test_payflow_console_reads_on_and_off() -> None:
    assert Settings.from_env({}).console is True
    assert Settings.from_env({"PAYFLOW_CONSOLE": "off"}).console is False
    assert Settings.from_env({"PAYFLOW_CONSOLE": " ON "}).console is True
    with pytest.raises(errors.SettingsError, match="PAYFLOW_CONSOLE"):
        Settings.from_env({"PAYFLOW_CONSOLE": "no"})

