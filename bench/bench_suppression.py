"""Benchmark: noise that stops at once. Merge requests with a recurring nit (the same debug print,
worded a little differently by the model each time), every other one with a real finding too, are
reviewed for real (the review job against a fake forge over HTTP, a student answering by what it is
asked) twice: with no reviewer reaction (the baseline), and with a trusted reviewer's ``/dismiss``
on the nit of the first merge request. Prints the inline comments each merge request got, the
totals and their ratio, and the review time of both runs (suppression reads the project's dismissed
findings and compares each new finding with them).

    .venv/bin/python bench/bench_suppression.py [--merge-requests 10] [--forge gitlab|github]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from bot import db
from tests.support.reviewed_site import open_site, run_recurring_nit


def scenario(forge: str, merge_requests: int, dismiss: bool) -> tuple[list[int], float]:
    """The inline comments per merge request, and the seconds all the reviews took."""
    with tempfile.TemporaryDirectory() as folder:
        engine = db.make_engine(f"sqlite:///{folder}/bench.db")
        db.upgrade(engine)
        with open_site(forge, engine) as site:
            started = time.perf_counter()
            counts = run_recurring_nit(site, merge_requests, dismiss=dismiss)
            seconds = time.perf_counter() - started
        engine.dispose()
    return counts, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merge-requests", type=int, default=10)
    parser.add_argument("--forge", choices=("gitlab", "github"), default="gitlab")
    args = parser.parse_args()
    before, before_s = scenario(args.forge, args.merge_requests, dismiss=False)
    after, after_s = scenario(args.forge, args.merge_requests, dismiss=True)
    nits_before = args.merge_requests
    nits_after = nits_before - (sum(before) - sum(after))
    print(f"{args.merge_requests} merge requests on the fake {args.forge}, a recurring nit on each:")
    print(f"  no dismissal:              inline comments per MR {before}, total {sum(before)}")
    print(f"  nit dismissed on the 1st:  inline comments per MR {after}, total {sum(after)}")
    print(f"  nits posted: {nits_before} -> {nits_after}; inline comments after/before: "
          f"{sum(after) / sum(before):.2f}")  # fmt: skip
    print(f"  review time, all MRs: {before_s:.2f} s -> {after_s:.2f} s (ratio {after_s / before_s:.2f})")


if __name__ == "__main__":
    main()
