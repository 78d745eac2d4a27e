"""`serve --dev`: keys on first use, both simulators in-process, the printed curl flow works."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shlex

import aiohttp

from simulator import devserver


async def test_dev_mode_runs_the_whole_flow(tmp_path: pathlib.Path, capsys: object) -> None:
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(devserver.serve_dev("127.0.0.1", 0, tmp_path / ".payflow-dev", stop=stop,
                                                   sim_ports=(0, 0), on_ready=ready.set_result))
    try:
        urls = await asyncio.wait_for(ready, 30)
        printed = capsys.readouterr().out  # type: ignore[attr-defined]
        assert (tmp_path / ".payflow-dev" / "keys.json").exists()
        commands = [line.strip() for line in printed.splitlines() if line.strip().startswith("curl")]
        assert len(commands) == 5
        # Run the printed commands (as argument lists: the same requests a shell would send).
        create = shlex.split(printed.split("# 1.")[1].split("# 2.")[0].split("\n", 1)[1].replace("\\\n", " "))
        headers = dict(create[i + 1].split(": ", 1) for i, token in enumerate(create) if token == "-H")
        body = json.loads(create[create.index("-d") + 1])
        async with aiohttp.ClientSession() as http:
            url = next(token for token in create if token.startswith("http"))
            async with http.post(url, json=body, headers=headers) as response:
                assert response.status == 201, await response.text()
            no = body["out_trade_no"]
            async with http.post(f"{urls['wechat']}/sim/v1/transactions/{no}/pay") as response:
                assert response.status == 200
            for _ in range(100):  # the simulator's notifier and the forward run in real time here
                async with http.get(f"{urls['payflow']}/v1/payments/{no}", headers=headers) as response:
                    view = await response.json()
                if view["state"] == "synced":
                    break
                await asyncio.sleep(0.05)
            assert view["state"] == "synced" and view["paid"] is True
            async with http.get(f"{urls['backend']}/sim/v1/orders") as response:
                orders = (await response.json())["orders"]
            assert [o["status"] for o in orders] == ["paid"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
