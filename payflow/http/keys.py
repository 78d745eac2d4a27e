"""Typed keys of what the app holds; set in `app.py`'s cleanup contexts, read by handlers."""

from __future__ import annotations

from aiohttp import web

from payflow.backend import Backend
from payflow.metrics import Metrics
from payflow.service import PaymentService
from payflow.settings import Settings
from payflow.store import PaymentStore
from payflow.wechat.api import WechatApi
from payflow.wechat.certificates import KeyRing

SETTINGS = web.AppKey("SETTINGS", Settings)
STORE = web.AppKey("STORE", PaymentStore)
SERVICE = web.AppKey("SERVICE", PaymentService)
METRICS = web.AppKey("METRICS", Metrics)
# The clients the service was given; null objects (raising NotConfigured) when not configured.
WECHAT = web.AppKey("WECHAT", WechatApi)
BACKEND = web.AppKey("BACKEND", Backend)
# The keys WeChat's signatures are checked with, shared by the client and the verifier; None when not configured.
KEY_RING: web.AppKey[KeyRing | None] = web.AppKey("KEY_RING")
