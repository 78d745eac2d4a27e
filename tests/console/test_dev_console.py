"""`serve --dev` prints the console's URL and its sign-in token, and both work."""

from __future__ import annotations

import asyncio
import pathlib
import re

import aiohttp
import pytest

from simulator import devserver
from tests.console.conftest import csrf_of


async def test_serve_dev_prints_the_console_and_its_token(tmp_path: pathlib.Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(devserver.serve_dev("127.0.0.1", 0, tmp_path / ".payflow-dev", stop=stop,
                                                   sim_ports=(0, 0), on_ready=ready.set_result))
    try:
        urls = await asyncio.wait_for(ready, 30)
        found = re.search(r"Operator console: (\S+)\s+\(sign in with the admin token (\S+)\)", capsys.readouterr().out)
        assert found is not None
        url, token = found.groups()
        assert url == f"{urls['payflow']}/console/"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(url) as page:  # → the sign-in form
                assert page.status == 200 and page.url.path == "/console/sign-in"
                form = await page.text()
            async with http.post(f"{urls['payflow']}/console/sign-in",
                                 data={"csrf": csrf_of(form), "token": token, "next": "/console/"}) as page:
                assert page.status == 200 and "<h1>Overview</h1>" in await page.text()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
