"""batchworks._quick: the quicker __init__ of the frozen dataclasses made once per job."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import pytest

from batchworks._quick import quick_init
from batchworks.backends.base import ClaimedJob
from batchworks.outcome import Outcome, OutcomeKind


@dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: str = "b"
    c: tuple[int, ...] = ()
    d: float = field(default=1.5, kw_only=True)


@quick_init
@dataclass(frozen=True, slots=True)
class _Quick:
    a: int
    b: str = "b"
    c: tuple[int, ...] = ()
    d: float = field(default=1.5, kw_only=True)


def test_the_same_signature_and_values_as_dataclasses_own() -> None:
    assert inspect.signature(_Quick) == inspect.signature(_Plain)
    assert str(inspect.signature(_Quick)).startswith("(a: 'int', b: 'str' = 'b'")
    for args, kwargs in [((1,), {}), ((1, "x", (2,)), {"d": 3.0}), ((), {"a": 1, "c": (5,)})]:
        assert dataclasses.astuple(_Quick(*args, **kwargs)) == dataclasses.astuple(
            _Plain(*args, **kwargs)
        )
    assert ClaimedJob.__init__.__qualname__ == "ClaimedJob.__init__"


def test_still_frozen_compared_and_hashed_by_value() -> None:
    one = Outcome(7, OutcomeKind.SUCCEEDED, queue="q", attempt=2)
    assert one == Outcome(job_id=7, kind=OutcomeKind.SUCCEEDED, delay=0.0, queue="q", attempt=2)
    assert hash(one) == hash(Outcome(7, OutcomeKind.SUCCEEDED, queue="q", attempt=2))
    assert (one.delay, one.result_json, one.claimed_at) == (0.0, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.job_id = 8  # type: ignore[misc]
    assert dataclasses.replace(one, attempt=3).attempt == 3
    with pytest.raises(TypeError, match="missing"):
        ClaimedJob(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional"):
        _Quick(1, "b", (), 2.0)  # type: ignore[misc]


def test_refuses_what_it_cannot_do_right() -> None:
    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = field(default_factory=list)

    @dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    for cls, why in [
        (NotFrozen, "frozen"),
        (Factory, "needs dataclass"),
        (PostInit, "__post_init__"),
        (NoSlots, "slots"),
    ]:
        with pytest.raises(TypeError, match=why):
            quick_init(cls)
