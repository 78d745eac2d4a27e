"""aioresponses, made to work with aiohttp 3.14.

aioresponses 0.7.9 builds ClientResponse without the `stream_writer` argument aiohttp 3.14 requires
(pnuckowski/aioresponses#289, fix unreleased in #288); aiohttp only reads its `output_size`.
Remove this shim once a fixed aioresponses is released.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiohttp import ClientResponse
from aioresponses import aioresponses


class CompatResponse(ClientResponse):
    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class mocked_http(aioresponses):  # noqa: N801 (used like aioresponses itself)
    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", CompatResponse)
        super().add(url, method, *args, **kwargs)
