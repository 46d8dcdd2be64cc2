from __future__ import annotations

import batchworks


def test_public_names_match_all() -> None:
    public = {name for name in vars(batchworks) if not name.startswith("_")}
    modules = {"backends", "errors", "job", "outcome", "report", "retry", "runner"}
    assert sorted(public - modules - {"annotations"}) == sorted(batchworks.__all__)
    assert batchworks.__all__ == sorted(batchworks.__all__)
