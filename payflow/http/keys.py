"""Typed keys of what the app holds; set in `app.py`'s cleanup contexts, read by handlers."""

from __future__ import annotations

from aiohttp import web

from payflow.metrics import Metrics
from payflow.service import PaymentService
from payflow.settings import Settings
from payflow.store import PaymentStore

SETTINGS = web.AppKey("SETTINGS", Settings)
STORE = web.AppKey("STORE", PaymentStore)
SERVICE = web.AppKey("SERVICE", PaymentService)
METRICS = web.AppKey("METRICS", Metrics)
WECHAT = web.AppKey("WECHAT", object)  # a WechatApi, or None when WeChat is not configured
BACKEND = web.AppKey("BACKEND", object)  # a BackendClient, or None when the backend is not configured
