"""The console in a real headless browser (Debian's Chromium, driven by Playwright) against payflow served on
loopback and wired to both simulators: an operator signs in, finds the payment whose notification WeChat
dropped, rechecks it, and sees it paid with source `admin`. Screenshots land in the test's tmp_path, and in
$PAYFLOW_SCREENSHOTS too when that is set (`PAYFLOW_SCREENSHOTS=docs` refreshes the README's)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from payflow.console import pages
from payflow.states import State
from tests import browser as browser_setup
from tests.e2e.conftest import World

TIMEOUT_MS = 10_000


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium (Playwright's own download does not work here), installed first when missing."""
    return browser_setup.chromium()


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    context.set_default_timeout(TIMEOUT_MS)
    opened = await context.new_page()
    try:
        yield opened
    finally:
        await context.close()


@pytest.fixture
def console_errors(page: Page) -> list[str]:
    """What the browser complained about (a CSP violation, a failed load, a script error)."""
    seen: list[str] = []

    def record(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            seen.append(message.text)

    page.on("console", record)
    page.on("pageerror", lambda error: seen.append(str(error)))
    return seen


def _url(world: World, path: str) -> str:
    return str(world.payflow.make_url(path))


async def _sign_in(page: Page, world: World) -> None:
    await page.goto(_url(world, "/console/"))
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Admin token").fill(world.settings.admin_token or "")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def _keep(shot: pathlib.Path) -> None:
    target = os.environ.get("PAYFLOW_SCREENSHOTS")
    if target:
        pathlib.Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, pathlib.Path(target) / shot.name)


async def _a_morning(world: World) -> str:
    """A few payments in every condition the overview shows; returns the one whose notification was dropped."""
    dropped = (await world.create("shop-1042", amount=4600, expires_in=600))["out_trade_no"]
    synced = (await world.create("shop-1040", amount=1999))["out_trade_no"]
    await world.pay(synced)
    await world.notify()
    rejected = (await world.create("shop-1041", amount=880, attach="<script>alert('attach')</script>"))["out_trade_no"]
    await world.register_at_backend("shop-1041", 880)
    world.cancel_at_backend("shop-1041")  # the backend answers 409 to its paid event: needs_review
    await world.pay(rejected)
    await world.notify()
    world.wechat_faults(never_deliver=1.0)  # WeChat drops every notification of the next payment
    await world.pay(dropped)
    await world.notify()
    world.advance(601)  # `dropped` expired while still prepaid here: stuck
    await world.create("shop-1043", amount=1250)
    assert (await world.payment(dropped)).state is State.PREPAID
    assert (await world.payment(synced)).state is State.SYNCED
    assert (await world.payment(rejected)).state is State.NEEDS_REVIEW
    return str(dropped)


async def test_an_operator_rechecks_the_payment_whose_notification_was_dropped(
        world: World, page: Page, console_errors: list[str], tmp_path: pathlib.Path) -> None:
    dropped = await _a_morning(world)
    await _sign_in(page, world)

    stuck = page.locator("section", has=page.get_by_role("heading", name="Stuck"))
    await expect(stuck.get_by_role("row")).to_have_count(2)  # the header and the dropped one
    await expect(page.locator(".reason", has_text="backend_rejected")).to_be_visible()
    overview = tmp_path / "console-overview.png"
    await page.screenshot(path=overview, full_page=True)
    _keep(overview)

    await stuck.get_by_role("link", name=dropped).click()
    await expect(page.locator("h1")).to_contain_text("not paid")
    await page.get_by_label("Recheck").fill("payer called: paid at 12:03, order still unpaid")
    await page.get_by_role("button", name="recheck").click()
    await expect(page.locator(".flash")).to_contain_text("recheck: accepted")
    await world.service.drain()  # the paid event reaches the backend

    await page.get_by_role("link", name="refresh").click()
    await expect(page.locator("h1")).to_contain_text("synced")
    await expect(page.locator("h1 .paid")).to_have_text("paid")
    pay_row = page.locator("table.timeline tr", has=page.locator("code", has_text=re.compile(r"^pay$")))
    await expect(pay_row.locator(".source")).to_have_text("admin")
    await expect(page.locator("table.timeline")).to_contain_text("payer called: paid at 12:03")
    shot = tmp_path / "console-payment.png"
    await page.screenshot(path=shot, full_page=True)
    _keep(shot)

    assert (await world.payment(dropped)).state is State.SYNCED
    assert world.backend_order("shop-1042") is not None
    assert console_errors == []


async def test_hostile_values_stay_inert_in_the_browser(world: World, page: Page, console_errors: list[str]) -> None:
    payload = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>"
    created = await world.create("shop-2001", attach=payload[:128])
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await _sign_in(page, world)
    await page.goto(_url(world, f"/console/payments/{created['out_trade_no']}"))
    await expect(page.locator("dd code", has_text="<script>")).to_have_text(payload[:128])
    assert await page.evaluate("window.__pwned") is None
    assert dialogs == [] and console_errors == []


async def test_the_overview_reloads_itself(world: World, page: Page, console_errors: list[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "OVERVIEW_REFRESH", 1)
    await _sign_in(page, world)
    first = await page.locator("footer").inner_text()
    world.advance(60)  # the next reload reads the store again, at the new time
    async with page.expect_event("load"):
        pass
    await expect(page.locator("footer")).not_to_have_text(first)
    assert console_errors == []
