"""make profile's text summary of py-spy's collapsed stacks."""

from __future__ import annotations

from bench.profile import summarize_collapsed

STACKS = """\
main (app/cli.py:10);serve (app/edge.py:20);send (uvicorn/h.py:463) 6
main (app/cli.py:10);serve (app/edge.py:21);decide (app/policy.py:5) 3
main (app/cli.py:10);serve (app/edge.py:20);serve (app/edge.py:90) 1
garbage line
"""


def test_own_and_inclusive_shares_per_function() -> None:
    text = summarize_collapsed(STACKS, top=10)
    own, inclusive = text.split("by inclusive time")
    assert text.startswith("10 samples")
    # Own time: the leaf frame, line numbers merged into one entry per function.
    assert " 60.0%  send (uvicorn/h.py)" in own
    assert " 30.0%  decide (app/policy.py)" in own
    assert " 10.0%  serve (app/edge.py)" in own
    # Inclusive: a function counts once per stack even when it recurses.
    assert "100.0%  serve (app/edge.py)" in inclusive
    assert "100.0%  main (app/cli.py)" in inclusive


def test_no_samples() -> None:
    assert summarize_collapsed("", top=5) == "no samples\n"
