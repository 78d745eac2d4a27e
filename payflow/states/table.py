"""`Table`: a state machine as data — (trigger, sources, destination) rows and pure guards — read by `plan()`,
by the stores' destination check, and by `machine()`, which builds the same table as a `transitions.Machine`.

The table is the one authority. `plan()` looks the step up and runs the guards; the `transitions` Machine is
built from the very same rows (with the guards as its conditions) and a test runs every (state, trigger,
guard outcome) through both, so the two can never disagree. The Machine is not on any request's path:
running an event through it costs more than the rest of a notification's decision.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from transitions import Machine
from transitions.core import EventData

from payflow import errors


class HasState(Protocol):
    """What a guard may look at besides the payload: at least the record's state."""

    @property
    def state(self) -> Any: ...


S = TypeVar("S", bound=enum.StrEnum)
T = TypeVar("T", bound=enum.StrEnum)
# A guard returns why it refuses, or None; a pure function of (record, payload).
Guard = Callable[[Any, Mapping[str, Any]], "str | None"]


class Table(Generic[S, T]):
    """The transition table of one kind of record (payments; later refunds)."""

    def __init__(
        self,
        states: type[S],
        triggers: type[T],
        rows: Iterable[tuple[T, tuple[S, ...], S]],
        guards: Mapping[T, tuple[Guard, ...]],
    ) -> None:
        self.states = states
        self.triggers = triggers
        self.rows: tuple[tuple[T, tuple[S, ...], S], ...] = tuple(rows)
        self.guards: Mapping[T, tuple[Guard, ...]] = dict(guards)
        self._destinations: dict[tuple[S, T], S] = {}
        for trigger, sources, dest in self.rows:
            for source in sources:
                if (source, trigger) in self._destinations:
                    raise ValueError(f"{trigger.value} from {source.value} appears twice in the table")
                self._destinations[(source, trigger)] = dest

    def destination(self, state: S | str, trigger: T | str) -> S | None:
        """Where the table takes (state, trigger), or None; no guards. Stores check every write with it."""
        return self._destinations.get((self._state(state), self._trigger(trigger)))

    def sources(self, trigger: T) -> frozenset[S]:
        """The states `trigger` may leave."""
        return frozenset(source for (source, t) in self._destinations if t is trigger)

    def plan(self, record: HasState, trigger: T | str, **payload: Any) -> S:
        """Where `trigger` takes `record`, or raise IllegalTransition / GuardRejected. Pure."""
        trigger = self._trigger(trigger)
        state = self._state(record.state)
        dest = self._destinations.get((state, trigger))
        if dest is None:
            raise errors.IllegalTransition(state.value, trigger.value)
        for guard in self.guards.get(trigger, ()):
            reason = guard(record, payload)
            if reason is not None:
                raise errors.GuardRejected(state.value, trigger.value, reason)
        return dest

    def machine(self) -> Machine:
        """The table as a `transitions.Machine(model=None)`, the guards as its conditions.

        For checking and drawing the table (a test runs every step through it and through `plan()`); a
        model triggered on it needs `record` and `payload` attributes and a `rejection` slot.
        """
        return Machine(
            model=None,
            states=[s.value for s in self.states],
            transitions=[
                {"trigger": trigger.value, "source": [s.value for s in sources], "dest": dest.value,
                 "conditions": [_condition(self.guards.get(trigger, ()))]}
                for trigger, sources, dest in self.rows
            ],
            initial=None,
            auto_transitions=False,
            send_event=True,
        )

    def _state(self, value: S | str) -> S:
        # Already a member on every hot path; calling the enum on one still costs a lookup.
        return value if value.__class__ is self.states else self.states(value)

    def _trigger(self, value: T | str) -> T:
        return value if value.__class__ is self.triggers else self.triggers(value)


def requires(name: str) -> Guard:
    """A guard refusing a step whose payload lacks the non-blank text `name`."""

    def guard(record: Any, payload: Mapping[str, Any]) -> str | None:
        value = payload.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"{name} is required"
        return None

    guard.__name__ = f"requires_{name}"
    return guard


def _condition(guards: tuple[Guard, ...]) -> Callable[[EventData], bool]:
    def check(event: EventData) -> bool:
        model: Any = event.model  # a probe with record, payload and rejection (see `machine()`)
        for guard in guards:
            reason = guard(model.record, model.payload)
            if reason is not None:
                model.rejection = reason
                return False
        return True

    return check
