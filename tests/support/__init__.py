"""What the chaos and bad-input suites share: worker processes (``worker.py``, started by
``harness.Fleet``), the ledger that accounts for every job (``ledger.py``), the scale and
figures of a run (``harness.py``) and their fixtures (``fixtures.py``)."""
