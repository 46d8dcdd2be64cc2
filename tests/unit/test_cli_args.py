"""The ``batchworks`` command's argument parsing, without a database (the command itself runs
against PostgreSQL in tests/postgres/test_cli.py)."""

from __future__ import annotations

import argparse

import pytest

from batchworks._cli_common import MAX_JOB_ID, parse_duration, parse_job_id
from batchworks.cli import _parser


class TestDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("90", 90),
            ("90s", 90),
            ("2.5m", 150),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("2d12h", 216_000),
            ("7d", 604_800),
            ("1w", 604_800),
            ("1week", 604_800),
            ("2 weeks", 1_209_600),
            ("1H30M", 5400),
            ("0s", 0),
        ],
    )
    def test_accepts(self, text: str, seconds: float) -> None:
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize(
        "text", ["", "soon", "-5", "1x", "h", "1.2.3", "1h30", "30 1h", "5 m s", "1e9"]
    )
    def test_refuses_with_examples(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match=r"is not a duration: use e\.g\. 90s"):
            parse_duration(text)

    def test_refuses_what_no_interval_holds(self) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="more than 100 years"):
            parse_duration("99999999w")


class TestNumbers:
    @pytest.mark.parametrize("text", ["0", "-5", "1.5", "ten", str(MAX_JOB_ID + 1)])
    def test_job_ids_are_checked(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="a job id must be a whole number"):
            parse_job_id(text)

    def test_the_largest_job_id_is_a_bigint(self) -> None:
        assert parse_job_id(str(MAX_JOB_ID)) == MAX_JOB_ID


class TestOptionsAnywhere:
    @pytest.mark.parametrize(
        "argv",
        [
            ["--dsn", "D", "--schema", "s", "jobs", "list"],
            ["jobs", "list", "--dsn", "D", "--schema", "s"],
            ["--dsn", "D", "jobs", "--schema", "s", "list"],
            ["jobs", "--dsn", "D", "list", "--schema", "s"],
        ],
    )
    def test_before_or_after_the_command(self, argv: list[str]) -> None:
        args = _parser().parse_args(argv)
        assert (args.dsn, args.schema, args.limit) == ("D", "s", 20)

    def test_a_position_left_empty_sets_nothing(self) -> None:
        args = _parser().parse_args(["stats"])
        assert not hasattr(args, "dsn") and not hasattr(args, "schema")
