from __future__ import annotations

import types

import batchworks


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(batchworks).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert sorted(public) == sorted(batchworks.__all__)
    assert batchworks.__all__ == sorted(batchworks.__all__)


def test_the_design_contract_names_are_exported() -> None:
    contract = {
        "Runner",
        "Job",
        "JobRecord",
        "JobState",
        "RunReport",
        "RetryPolicy",
        "Retryable",
        "Terminal",
        "Snooze",
        "MemoryBackend",
        "PostgresBackend",
        "Schedule",
    }
    assert contract <= set(batchworks.__all__)
