"""The backend simulator's fault plan: a frozen, strictly validated `BackendFaults` with its CLI flags,
and `FaultInjector`, the live plan with its seeded dice and the holds that shutdown releases."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, NamedTuple

from payflow.clock import Clock

Window = tuple[float, float]
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_STALL_SECONDS = 30.0


class FaultPlanError(ValueError):
    """A fault plan field is unknown, of the wrong type or out of range; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class BackendFaults:
    """What goes wrong at the backend, per paid-event request (control endpoints are never faulted).

    Precedence for one request: outage (503) > latency (then continue) > error (500) > stall (held
    `stall_seconds`, then 503, nothing applied) > lost answer: the event goes through signature check and
    ledger as usual (so a valid one is applied), then the answer is held up to `stall_seconds` and the
    connection closed without a response.
    """

    error_rate: float = 0.0
    latency: Window = (0.0, 0.0)  # seconds, uniform between min and max
    outages: tuple[Window, ...] = ()  # [start, end) seconds after the app started, by its clock
    stall_rate: float = 0.0
    stall_seconds: float = DEFAULT_STALL_SECONDS
    lost_answer_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("error_rate", "stall_rate", "lost_answer_rate"):
            value = _number(name, getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise FaultPlanError(name, f"must be between 0 and 1, got {value}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "latency", _window("latency", self.latency, allow_equal=True))
        if not isinstance(self.outages, (list, tuple)):
            raise FaultPlanError("outages", "must be a list of [start, end] windows")
        windows = tuple(_window(f"outages[{i}]", w, allow_equal=False) for i, w in enumerate(self.outages))
        object.__setattr__(self, "outages", windows)
        stall = _number("stall_seconds", self.stall_seconds)
        if stall <= 0:
            raise FaultPlanError("stall_seconds", f"must be > 0, got {stall}")
        object.__setattr__(self, "stall_seconds", stall)

    def in_outage(self, elapsed: float) -> bool:
        return any(start <= elapsed < end for start, end in self.outages)

    def to_json(self) -> dict[str, Any]:
        return {
            "error_rate": self.error_rate,
            "latency": list(self.latency),
            "outages": [list(w) for w in self.outages],
            "stall_rate": self.stall_rate,
            "stall_seconds": self.stall_seconds,
            "lost_answer_rate": self.lost_answer_rate,
        }

    @classmethod
    def from_json(cls, data: Any) -> BackendFaults:
        """Strict: an unknown field or bad value raises `FaultPlanError` naming it; absent fields default."""
        if not isinstance(data, Mapping):
            raise FaultPlanError("faults", "must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        for name in data:
            if name not in known:
                raise FaultPlanError(str(name), f"unknown field (known: {', '.join(sorted(known))})")
        return cls(**dict(data))

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
        """Flags mirroring the fields; `prefix` ("backend-") lets one parser carry two simulators' plans."""
        group = parser.add_argument_group(f"{prefix}backend simulator faults")
        group.add_argument(f"--{prefix}error-rate", type=_rate_arg, metavar="P",
                           help="share of paid events answered 500 without applying (0..1)")
        group.add_argument(f"--{prefix}latency", type=_latency_arg, metavar="MIN[:MAX]",
                           help="seconds added before each paid event is handled")
        group.add_argument(f"--{prefix}outage", type=_window_arg, action="append", metavar="START:END",
                           help="seconds after start during which every paid event gets 503 (repeatable)")
        group.add_argument(f"--{prefix}stall-rate", type=_rate_arg, metavar="P",
                           help="share of paid events held --stall-seconds, then dropped unapplied (0..1)")
        group.add_argument(f"--{prefix}stall-seconds", type=float, metavar="S",
                           help=f"how long stalls and lost answers are held ({DEFAULT_STALL_SECONDS:g}s)")
        group.add_argument(f"--{prefix}lost-answer-rate", type=_rate_arg, metavar="P",
                           help="share of paid events applied but never answered (0..1)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, prefix: str = "") -> BackendFaults:
        """The plan the flags describe; flags not given keep the defaults. Raises `FaultPlanError`."""
        dest = prefix.replace("-", "_")
        values: dict[str, Any] = {}
        for field, name in (("error_rate", "error_rate"), ("latency", "latency"), ("outages", "outage"),
                            ("stall_rate", "stall_rate"), ("stall_seconds", "stall_seconds"),
                            ("lost_answer_rate", "lost_answer_rate")):
            value = getattr(args, dest + name, None)
            if value is not None:
                values[field] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


def _number(field: str, value: Any) -> float:
    # bool is an int subclass; `true` is never a meaningful rate or duration.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FaultPlanError(field, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise FaultPlanError(field, f"must be finite, got {value}")
    return float(value)


def _window(field: str, value: Any, *, allow_equal: bool) -> Window:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise FaultPlanError(field, f"must be [start, end] seconds, got {value!r}")
    low, high = _number(field, value[0]), _number(field, value[1])
    if low < 0 or high < low or (high == low and not allow_equal):
        relation = "<=" if allow_equal else "<"
        raise FaultPlanError(field, f"needs 0 <= start {relation} end, got [{low:g}, {high:g}]")
    return (low, high)


def _rate_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _pair_arg(text: str) -> Window:
    parts = text.split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds like 10:20, got {text!r}") from None
    if len(numbers) == 1:
        return (numbers[0], numbers[0])
    if len(numbers) != 2:
        raise argparse.ArgumentTypeError(f"expected START:END, got {text!r}")
    return (numbers[0], numbers[1])


def _latency_arg(text: str) -> Window:
    try:
        return _window("latency", _pair_arg(text), allow_equal=True)
    except FaultPlanError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _window_arg(text: str) -> Window:
    if ":" not in text:
        raise argparse.ArgumentTypeError(f"expected START:END seconds, got {text!r}")
    try:
        return _window("outage", _pair_arg(text), allow_equal=False)
    except FaultPlanError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Dice(NamedTuple):
    """One paid-event request's draws, each uniform in [0, 1)."""

    latency: float
    error: float
    stall: float
    lost_answer: float


class FaultInjector:
    """The live fault plan, its seeded dice, counters, and the holds that shutdown releases."""

    KINDS = ("outage", "error", "delayed", "stall", "lost_answer")

    def __init__(self, plan: BackendFaults, *, seed: int, clock: Clock, sleep: Sleep) -> None:
        self.plan = plan
        self.injected = dict.fromkeys(self.KINDS, 0)
        self._rng = random.Random(f"backend:{seed}")  # its own stream, apart from the WeChat simulator's
        self._clock = clock
        self._sleep = sleep
        self._started = clock.now()
        self._released = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.busy = 0  # paid-event handlers in progress

    def start(self) -> None:
        self._started = self._clock.now()
        self._released.clear()

    def elapsed(self) -> float:
        return (self._clock.now() - self._started).total_seconds()

    def roll(self) -> Dice:
        # Always four draws per event, so request n sees the same dice whatever the plan says.
        return Dice(*(self._rng.random() for _ in range(4)))

    def record(self, kind: str) -> None:
        self.injected[kind] += 1

    async def hold(self, seconds: float) -> None:
        """Sleep (via the injected sleep) unless the app shuts down first."""
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        released = asyncio.ensure_future(self._released.wait())
        try:
            await asyncio.wait({sleeper, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, released):
                task.cancel()
            await asyncio.gather(sleeper, released, return_exceptions=True)

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Wrap a paid-event handler, so shutdown can wait for held ones to finish."""
        self.busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.busy -= 1
            if not self.busy:
                self._idle.set()

    async def shutdown(self, grace: float = 5.0) -> None:
        """Release every hold, then wait up to `grace` seconds for the handlers holding them to finish.

        aiohttp stops tracking a handler once its client has hung up, so without this a held request
        would outlive the app and be destroyed pending with the loop.
        """
        self._released.set()
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            pass  # the handlers are cancelled with the loop; shutting down must not hang on them
