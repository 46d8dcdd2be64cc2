"""The statements of queries.py: each a whole statement that prepares on its own, each used by
the backend, and the copies of one rule that queries.py keeps in several statements the same."""

from __future__ import annotations

import inspect
import re

import asyncpg
import pytest

from batchworks.backends.postgres import _batches as batches_module
from batchworks.backends.postgres import backend as backend_module
from batchworks.backends.postgres import queries
from batchworks.backends.postgres._reads import OperatorReads
from batchworks.backends.postgres.backend import STATEMENTS, PostgresBackend, Queries

# The constants of queries.py that are a part of statements, not a statement.
PARTS = {"NOTIFY_DONE_ITEM", "BATCH_DELTAS", "BATCH_FINISH"}

# The copies queries.py's header comment lists, by statement.
RECOVERING = ("REGISTER_WORKER", "UNREGISTER_WORKER", "RECOVER")
WAKING = ("RETRY_FAILED", "SETTLE", *RECOVERING)
CLAIMING = ("CLAIM_ONE", "CLAIM")
# Statements that change members with a "bd" of their own (the batch's, not one per member).
OWN_DELTAS = ("CANCEL_BATCH",)


def _words(text: str) -> list[str]:
    """The text without its layout: copies may be indented differently (a comma is a word of
    its own, so that a part ends the same before the comma that follows it in a statement)."""
    return text.replace(",", " , ").split()


def _constants() -> set[str]:
    return {
        name
        for name, value in vars(queries).items()
        if name.isupper() and isinstance(value, str) and not name.startswith("_")
    }


def _occurrences(words: list[str], part: list[str]) -> int:
    return sum(1 for i in range(len(words)) if words[i : i + len(part)] == part)


def _without(words: list[str], part: list[str]) -> list[str]:
    """``words`` with each run equal to ``part`` taken out."""
    out, i = [], 0
    while i < len(words):
        if words[i : i + len(part)] == part:
            i += len(part)
        else:
            out.append(words[i])
            i += 1
    return out


def _between(text: str, start: str, end: str) -> str:
    """From ``start`` to the first ``end`` after it, both included."""
    begin = text.index(start)
    return text[begin : text.index(end, begin) + len(end)]


def test_every_statement_of_queries_py_has_its_field_and_no_field_lacks_one() -> None:
    statements = _constants() - PARTS
    assert {name.upper() for name in STATEMENTS} == statements, (
        "queries.py and the fields of Queries (backend.py) differ: give each statement of "
        "queries.py a field of its lower-case name"
    )
    assert not [name for name in vars(queries) if name.startswith("_") and name.isupper()], (
        "queries.py has a private fragment: write whole statements (see its header comment)"
    )


def test_the_backend_uses_every_statement_and_only_statements_it_has() -> None:
    # the class and its mixins: the operators' reads (_reads.py) and the batches (_batches.py)
    source = (
        inspect.getsource(backend_module.PostgresBackend)
        + inspect.getsource(OperatorReads)
        + inspect.getsource(batches_module.PostgresBatchCalls)
    )
    used = set(re.findall(r"self\._q\.(\w+)", source))
    fields = set(STATEMENTS) | {"channel", "finished_channel", "waited", "names"}
    assert used <= fields, f"self._q has no {sorted(used - fields)}"
    assert set(STATEMENTS) <= used, f"the backend never runs {sorted(set(STATEMENTS) - used)}"


def test_the_recovery_of_a_lost_job_is_the_same_in_every_statement_that_recovers() -> None:
    # From the UPDATE of the lost rows to the final SELECT: the "upd" and "woke" CTEs.
    tails = {}
    for name in RECOVERING:
        text = getattr(queries, name)
        tails[name] = _words(text[text.index("upd AS (") : text.rindex("\nSELECT")])
    first = tails[RECOVERING[0]]
    assert "'WorkerLost'" in first  # the cut found the recovery
    assert all(tail == first for tail in tails.values()), (
        "the recovery of a lost job differs between "
        f"{[name for name, tail in tails.items() if tail != first]} and {RECOVERING[0]}: "
        "change every copy (queries.py's header comment lists them)"
    )


def test_idle_runners_are_woken_the_same_way_by_every_statement_that_requeues() -> None:
    woke = {name: _words(_between(getattr(queries, name), "woke AS (", "\n)")) for name in WAKING}
    first = woke[WAKING[0]]
    assert "pg_notify(__CHANNEL__" in first
    assert all(copy == first for copy in woke.values()), woke


def test_every_statement_that_ends_a_job_notifies_waiters_with_the_same_item() -> None:
    item = _words(queries.NOTIFY_DONE_ITEM)
    ending = [name for name in _constants() - PARTS if "__FINISHED__" in getattr(queries, name)]
    assert set(ending) >= {"CANCEL", "SETTLE", "SETTLE_SUCCEEDED", *RECOVERING}
    finish = _words(queries.BATCH_FINISH)
    for name in ending:
        # BATCH_FINISH's own pg_notify on that channel is wait_batch()'s, not a job's
        words = _without(_words(getattr(queries, name)), finish)
        if not words.count("pg_notify(__FINISHED__"):
            continue  # CLOSE_BATCH: it ends no job
        starts = [i for i in range(len(words)) if words[i : i + len(item)] == item]
        assert len(starts) == words.count("pg_notify(__FINISHED__") == 1, (
            f"{name} notifies wait_job() waiters other than by NOTIFY_DONE_ITEM"
        )


# A statement that writes a job's state: an UPDATE of jobs whose SET clause assigns it.
_JOBS_UPDATE = re.compile(r"UPDATE __SCHEMA__\.jobs(?: AS j)?\s+SET\s(.*?)\b(?:FROM|WHERE)\b", re.S)
_ASSIGNS_STATE = re.compile(r"(?<![\w.])state\s*=")


def _sets_state(text: str) -> bool:
    return any(_ASSIGNS_STATE.search(clause) for clause in _JOBS_UPDATE.findall(text))


def test_every_statement_that_changes_a_jobs_state_keeps_its_batch_counters() -> None:
    # The claim is the exception: a batch's running members are counted when it is read, so
    # the hot claim never takes a batch row's lock.
    deltas, finish = _words(queries.BATCH_DELTAS), _words(queries.BATCH_FINISH)
    statements = _constants() - PARTS
    changing = {name for name in statements if _sets_state(getattr(queries, name))}
    changing -= set(CLAIMING)
    # The settles of flushes with no member (the backend knows from its claims) leave the
    # bookkeeping out, and may touch no member: their UPDATE takes rows of no batch only.
    unbatched = {name for name in changing if name.endswith("_UNBATCHED")}
    assert unbatched == {"SETTLE_UNBATCHED", "SETTLE_SUCCEEDED_UNBATCHED"}
    for name in unbatched:
        # the fence, a CASE (see SETTLE_SUCCEEDED's comment): its condition names the token
        [fence] = re.findall(r"\bCASE WHEN\b[^\n]*worker_token = \$1[^\n]*", getattr(queries, name))
        assert fence.endswith("batch_id IS NULL"), (name, fence)
        assert name.removesuffix("_UNBATCHED") in changing
    changing -= unbatched
    assert changing >= {
        "SETTLE",
        "SETTLE_SUCCEEDED",
        "CANCEL",
        "RETRY_FAILED",
        "CANCEL_BATCH",
        *RECOVERING,
    }, changing
    for name in sorted(changing):
        words = _words(getattr(queries, name))
        assert _occurrences(words, finish) == 1, (
            f"{name} changes a job's state without BATCH_FINISH word for word: a batch's "
            "counters would miss it (queries.py's header comment lists the copies)"
        )
        if name not in OWN_DELTAS:
            assert _occurrences(words, deltas) == 1, (
                f"{name} changes a job's state without BATCH_DELTAS word for word"
            )
    # And the statements that close a batch finish it the same way.
    assert _occurrences(_words(queries.CLOSE_BATCH), finish) == 1


def test_the_two_claims_differ_only_in_how_they_pick_due_jobs() -> None:
    one, several = queries.CLAIM_ONE, queries.CLAIM
    pick = "ANY(ARRAY("
    after = "))\n    RETURNING"
    assert one[: one.index(pick)] == several[: several.index(pick)]
    assert one[one.index(after) :] == several[several.index(after) :]


async def _prepare(conn: asyncpg.Connection, name: str, text: str) -> None:
    try:
        await conn.prepare(text)
    except asyncpg.PostgresError as exc:
        pytest.fail(f"statement {name} does not prepare: {exc!r}\n{text}")


@pytest.mark.postgres
async def test_every_statement_prepares_on_a_migrated_schema(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        filled = Queries.fill(pg_backend.schema)
        for name in STATEMENTS:
            await _prepare(conn, name, getattr(filled, name))
    finally:
        await conn.close()


def test_no_statement_encodes_outcome_kinds_or_the_suspect_rule() -> None:
    # The rules of outcome.py and Runner.SUSPECT_AFTER live once, in Python: SQL stores facts.
    kinds = {"'retried'", "'snoozed'", "'released'"}
    for name in _constants() - PARTS:
        text = getattr(queries, name)
        assert not [kind for kind in kinds if kind in text], f"{name} names an outcome kind"
        assert ">= 2" not in text, f"{name} holds a threshold of the runner's"
