"""What developers and reviewers see on the merge request, through the real review job on both fake
forges with a student that answers by what it is asked (so several merge requests can be reviewed):

- a finding's comment: badge, title, review, the explanation folded, how to teach the bot, the model;
- the summary: counts by severity, what was held back and why; ``quiet`` posts none with nothing to say;
- the merge gate: ``pending`` while the review runs, ``failed`` with the counts, ``success`` once a
  trusted reviewer dismisses the blocking finding (an untrusted one's dismissal changes nothing);
- the cap: the most severe, then most confident, findings are posted, the rest listed;
- suppression: a nit reviewers dismissed stops at the next merge request, is listed as suppressed,
  counted, and an admin can undo it (``unsuppress``), which posts it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from bot.api import create_app
from bot.events import SignalKind
from bot.feedback.stats import acceptance
from bot.feedback.suppression import suppressed_findings, unsuppress
from bot.models import Finding, Outbox, Review, ReviewStatus
from bot.outbox import Job
from bot.queue.tasks import Queue
from bot.review.job import post_unsuppressed
from bot.review.render import reference
from tests.support.db import session_scope
from tests.support.reviewed_site import QUERY, SERVICE, Site, Student, nit_file, open_site, run_recurring_nit


@pytest.fixture(params=["gitlab", "github"])
def site(request: pytest.FixtureRequest, engine: sa.Engine) -> Iterator[Site]:
    with open_site(request.param, engine) as opened:
        yield opened


def test_a_finding_comment_invites_teaching(site: Site) -> None:
    number = site.open_mr({"svc/query.py": QUERY})
    site.review(number)
    bodies = site.comments(number)
    assert len(bodies) == 2
    critical = next(b for b in bodies if "SQL injection" in b)
    assert critical.startswith("🔴 **critical** · SQL injection\n\nThe query is built from user input")
    assert "<details><summary>Why critical</summary>\n\nIt matters here because \\<b\\>@\u2060all" in critical
    assert "\\/approve" in critical  # the model's words stay inert inside the fold
    footer = next(line for line in critical.splitlines() if "Teach reviewbot" in line)
    assert "👍 or 👎" in footer
    assert "`/severity LEVEL [reason]`" in footer
    assert "`/dismiss [reason]`" in footer
    assert "model `scripted`" in footer
    assert "⚪ **trivial** · Debug print left in code" in "\n".join(bodies)


def test_the_summary_counts_by_severity_and_names_the_models(site: Site) -> None:
    number = site.open_mr({"svc/query.py": QUERY, "svc/client.py": SERVICE})
    site.review(number, console_url="https://reviewbot.example.com/console")
    summary = site.summary(number)
    assert summary is not None
    assert "| 🔴 critical | 🟠 major | 🟡 minor | ⚪ trivial |" in summary
    assert "| 1 | 1 | 0 | 1 |" in summary
    assert "3 new comment(s)" in summary
    assert "Models: explanation `scripted`, find `scripted`, severity `scripted`" in summary
    review = site.finding(number, "SQL").review_id
    assert f"[this review in the console](https://reviewbot.example.com/console/reviews/{review})" in summary


def test_a_quiet_project_gets_no_summary_with_nothing_to_say(site: Site) -> None:
    site.project(quiet=True)
    clean = site.open_mr({"docs/notes.py": "x = 1\n"})
    site.review(clean)
    assert site.summary(clean) is None
    assert site.comments(clean) == []
    noisy = site.open_mr({"svc/client.py": SERVICE})
    site.review(noisy)
    assert site.summary(noisy) is not None  # a finding is something to say


def test_the_gate_goes_pending_then_failed_then_green_after_a_trusted_dismissal(site: Site) -> None:
    site.project(block_on="major")
    number = site.open_mr({"svc/query.py": QUERY, "svc/client.py": SERVICE})
    review = site.review(number)
    states = [s["state"] for s in site.statuses(number)]
    assert states[0] == "pending"  # set when the review started
    with Session(site.engine) as session:  # the verdict waits in the outbox for the gate job
        staged = session.exec(select(Outbox).where(Outbox.task == Job.GATE)).all()
    assert [row.args for row in staged] == [[site.project_id, number]]
    queue = Queue(site.settings(), site.engine, forges=site.forge)

    assert queue.gate(site.project_id, number).startswith("failed")
    failed = site.statuses(number)[-1]
    assert failed["state"] in ("failed", "failure")
    assert failed["description"].startswith("2 finding(s) at major or above: 1 critical, 1 major")
    assert (failed.get("name") or failed.get("context")) == "reviewbot"
    assert review.summary_comment_id
    assert review.summary_comment_id in failed["target_url"]

    site.command(site.finding(number, "SQL"), "gus", SignalKind.DISMISS)  # a guest: labels nothing
    queue.gate(site.project_id, number)
    assert site.statuses(number)[-1]["state"] in ("failed", "failure")

    site.command(site.finding(number, "SQL"), "bob", SignalKind.DISMISS, "parameterised upstream")
    site.command(site.finding(number, "timeout"), "bob", SignalKind.SEVERITY, "minor")  # below the gate
    assert queue.gate(site.project_id, number).startswith("success")
    green = site.statuses(number)[-1]
    assert green["state"] == "success"
    assert green["description"] == "no finding at major or above stands (2 cleared by reviewers)"
    with Session(site.engine) as session:
        gates = session.exec(select(Outbox).where(Outbox.task == Job.GATE)).all()
    assert len(gates) == 1 + 3  # the review's, and one per command (the guest's too: it may count later)


def test_a_failed_review_says_so_on_the_gate(site: Site) -> None:
    site.project(block_on="critical")
    number = site.open_mr({"svc/query.py": QUERY})
    with session_scope(site.engine) as session:
        session.add(Review(project_id=site.project_id, mr_number=number, head_sha=site.heads[number],
                           status=ReviewStatus.FAILED, error="the model server was unreachable"))  # fmt: skip
    queue = Queue(site.settings(), site.engine, forges=site.forge)
    queue.gate(site.project_id, number)
    assert site.statuses(number)[-1]["state"] in ("failed", "error")


def test_the_cap_posts_the_most_severe_then_most_confident_and_lists_the_rest(site: Site) -> None:
    site.project(max_comments=2)
    code = QUERY + "def run(x):\n    return eval(x)\n" + SERVICE + "try:\n    go()\nexcept:\n    pass\n"
    number = site.open_mr({"svc/all.py": code})
    site.review(number)
    posted = site.comments(number)
    # two criticals: the more confident (SQL injection, 0.95) and eval (0.6) beat major, minor, trivial
    assert sorted(b.split("\n")[0] for b in posted) == [
        "🔴 **critical** · Arbitrary code execution", "🔴 **critical** · SQL injection",
    ]  # fmt: skip
    summary = site.summary(number)
    assert summary is not None
    assert "Not posted inline, past the cap of 2 comments (3):" in summary
    for title in ("No timeout on the HTTP call", "Bare except", "Debug print left in code"):
        assert title in summary
    with Session(site.engine) as session:
        statuses = sorted(f.status for f in session.exec(select(Finding)).all())
    assert statuses == ["listed"] * 3 + ["posted"] * 2


def test_findings_that_fail_the_gate_are_posted_past_the_cap(site: Site) -> None:
    site.project(max_comments=1, block_on="critical")
    number = site.open_mr({"svc/all.py": QUERY + "def run(x):\n    return eval(x)\n"})
    site.review(number)
    titles = sorted(b.split("\n")[0] for b in site.comments(number))
    assert titles == ["🔴 **critical** · Arbitrary code execution", "🔴 **critical** · SQL injection"]


class NoDeliveries:  # the intake's queue: no webhook is sent here
    def wake(self) -> None:
        raise AssertionError("no delivery was sent")


def test_a_dismissed_nit_stops_at_the_next_merge_request(site: Site) -> None:
    after = run_recurring_nit(site, 4, dismiss=True)
    assert after == [1, 1, 0, 1]  # the nit on the first only; the odd ones also have a real finding

    summary = site.summary(2)
    assert summary is not None
    fold = r"<details><summary>Suppressed, like findings reviewers dismissed \(1\)</summary>(.*?)</details>"
    held = re.search(fold, summary, re.DOTALL)
    assert held is not None
    first = reference(site.kind, 1)  # !1 or #1, inert: no cross-reference note on it
    assert first in ("!\u20601", "\\#\u20601")
    assert f"like a finding dismissed on {first} by @\u2060bob (similarity" in held.group(1)
    rows = suppressed_findings(site.engine, site.path)
    assert [row["mr"] for row in rows] == [4, 3, 2]
    assert sum(row["suppressed"] for row in acceptance(site.engine, site.path)) == 3
    with TestClient(create_app(site.engine, NoDeliveries(), site.settings(public_metrics=True))) as client:
        exposed = client.get("/metrics").text
    labels = f'model_version="scripted",project="{site.path}",severity="trivial"'
    assert f"reviewbot_findings_suppressed{{{labels}}} 3.0" in exposed

    # An admin undoes one: it is posted (the merge request is still at that head), and the dismissed
    # nit no longer suppresses anything.
    said = unsuppress(site.engine, rows[-1]["finding_id"])
    assert "queued for posting" in said
    with Session(site.engine) as session:
        post = session.exec(select(Outbox).where(Outbox.task == Job.POST)).one()
    assert post_unsuppressed(post.args[0], site.engine, site.forge) == "posted 1"
    assert post_unsuppressed(post.args[0], site.engine, site.forge) == "nothing to post"  # no double post
    assert len(site.comments(2)) == 2  # its real finding, and now the nit
    number = site.open_mr(nit_file(9))
    site.review(number, Student(nit=1))
    assert len(site.comments(number)) == 1
    with pytest.raises(LookupError, match="not suppressed"):
        unsuppress(site.engine, site.finding(number, "debug").id or 0)


def test_the_nit_scenario_before_and_after(site: Site) -> None:
    """The scenario ``bench/bench_suppression.py`` measures: five merge requests with a recurring nit,
    two with a real finding too; without a dismissal, and with one on the first merge request."""
    assert run_recurring_nit(site, 5, dismiss=False) == [1, 2, 1, 2, 1]
    assert run_recurring_nit(site, 5, dismiss=True) == [1, 1, 0, 1, 0]
