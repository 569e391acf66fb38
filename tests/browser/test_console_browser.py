"""The console in headless Chromium against the real app over HTTP (see conftest.py): signing in; a
threshold changed on the project page holding for the next review a webhook starts; an adapter
promoted and rolled back on the models page; a flywheel run started on its page, queued on the
trainer queue and run there; every page rendering with data and empty, without a console error
(hostile names included: a script rendered raw would run, or be refused by the CSP with an error)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from bot.models import FlywheelRun, ModelStatus, ModelVersion, RunStatus, Task
from bot.queue import Queue
from flywheel import golden
from flywheel.jobs import TrainerQueue
from tests.browser.tab import Served, Tab, off_the_loop
from tests.browser.world import HOSTILE, fill, seal_secret, versions
from tests.review.test_review_flow import deliver, run_jobs
from tests.support.console import TOKEN
from tests.support.reviewed_site import QUERY, SERVICE, Student, open_site
from tests.support.scripted_server import scripted_server
from tests.support.secrets import SECRET_KEY
from tests.support.tiny_model import TinyStudent

pytestmark = pytest.mark.browser
Serve = Callable[..., Served]
Tabs = Callable[[str], Tab]

# (screenshot name, path, the table that lists the page's rows)
PAGES = [
    ("projects", "/admin/projects", "table#projects"),
    ("reviews", "/admin/reviews", "table#reviews"),
    ("verdicts", "/admin/verdicts", "table#verdicts"),
    ("flywheel", "/admin/flywheel", "table#runs"),
    ("models", "/admin/models", "table#models"),
    ("health", "/admin/health", "table#checks"),
    ("audit", "/admin/audit", "table#audit"),
]


def rows(tab: Tab, table: str) -> int:
    """Rows of data in ``table`` (header rows are made of ``th`` only)."""
    return tab.page.locator(f"{table} tr:has(td)").count()


def test_sign_in_refuses_a_wrong_token_and_accepts_the_right_one(
    engine: sa.Engine, serve: Serve, tabs: Tabs
) -> None:
    served = serve(engine)
    tab = tabs(served.url)
    tab.go("/admin/reviews")
    assert tab.path() == "/admin/login?next=/admin/reviews"  # a page asks for a session first
    tab.shot("login")
    tab.page.fill("#token", "not-the-token")
    tab.submit("#sign-in")
    assert tab.path().startswith("/admin/login")
    assert "wrong token" in tab.page.inner_text(".flash.error")
    assert tab.page.context.cookies() == []

    tab.go("/admin/reviews")
    tab.page.fill("#token", TOKEN)
    tab.submit("#sign-in")
    assert tab.path() == "/admin/reviews"  # back where the admin was going
    [cookie] = tab.page.context.cookies()
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"

    tab.submit("#sign-out")
    assert tab.path() == "/admin/login"
    tab.go("/admin/projects")
    assert tab.path().startswith("/admin/login")


def test_a_threshold_set_on_the_page_holds_for_the_next_webhook_review(
    engine: sa.Engine, serve: Serve, tabs: Tabs, tmp_path: Path
) -> None:
    """Two merge requests with a critical, a major and a trivial finding, each reviewed as a webhook
    starts it (the app's intake, the queue's jobs, the review job, the fake GitLab): the first at
    the project's threshold ``trivial``, the second after the admin set ``major`` on the page."""
    files = {"svc/query.py": QUERY, "svc/client.py": SERVICE}
    with open_site("gitlab", engine) as site, scripted_server(Student()) as student_url:
        seal_secret(site)
        settings = site.settings(student_url, secret_key=SECRET_KEY, queue_url=f"sqlite:///{tmp_path}/q.db")
        queue = Queue(settings, engine, forges=site.forge, retry_delay_s=0)
        served = serve(engine, queue, secret_key=SECRET_KEY)
        assert site.gitlab is not None
        merge_requests = site.gitlab.projects[0].merge_requests

        def review(number: int) -> set[str]:
            with httpx.Client(base_url=served.url) as client:
                deliver(client, merge_requests[number], "open")  # type: ignore[arg-type]
            off_the_loop(lambda: run_jobs(queue))
            return {body.split("\n")[0] for body in site.comments(number)}

        before = review(site.open_mr(files))
        assert before == {"🔴 **critical** · SQL injection", "🟠 **major** · No timeout on the HTTP call",
                          "⚪ **trivial** · Debug print left in code"}  # fmt: skip

        tab = tabs(served.url)
        tab.sign_in()
        tab.go(f"/admin/projects/{site.project_id}")
        threshold = "#settings-form select[name=severity_threshold]"
        assert tab.page.input_value(threshold) == "trivial"
        tab.page.select_option(threshold, "major")
        tab.submit("#save")
        assert tab.page.locator(".flash.done").count() == 1, tab.page.inner_text("main")
        assert tab.page.input_value(threshold) == "major"
        assert "severity_threshold" in tab.page.inner_text("table#audit")
        assert site.project_row().severity_threshold == "major"

        after = review(site.open_mr(files))
        assert after == {"🔴 **critical** · SQL injection", "🟠 **major** · No timeout on the HTTP call"}
        tab.go(f"/admin/reviews?project={site.project_id}", shot="reviews-after-webhooks")
        assert rows(tab, "table#reviews") == 2


def status(engine: sa.Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {v.adapter_name: v.status for v in session.exec(select(ModelVersion)).all()}


def test_an_adapter_is_promoted_and_rolled_back_on_the_models_page(
    engine: sa.Engine, serve: Serve, tabs: Tabs, tmp_path: Path
) -> None:
    versions(engine, tmp_path / "adapters")  # v1 retired, v2 active, v3 a candidate
    served = serve(engine, flywheel_dir=tmp_path / "fw")
    tab = tabs(served.url)
    tab.sign_in()
    tab.go("/admin/models", shot="models-before-promote")
    assert "active" in tab.page.inner_text("tr#model-severity-v2")

    row = tab.page.locator("tr#model-severity-v3")
    row.locator("form.promote input[name=force]").check()
    row.locator("form.promote input[name=reason]").fill("the golden set is stale; v3 reads better")
    tab.submit("tr#model-severity-v3 button.promote")
    assert tab.page.locator(".flash.done").count() == 1, tab.page.inner_text("main")
    # Forced past the gate, it is still first a canary on a share of merge requests.
    assert status(engine) == {"severity-v1": "retired", "severity-v2": "active", "severity-v3": "canary"}
    assert "severity-v3" in tab.page.inner_text("#canary-severity")
    assert "active" in tab.page.inner_text("tr#model-severity-v2")

    tab.submit(rollback_button(tab, Task.SEVERITY))  # the canary's: the version in use's is hidden
    assert tab.page.locator(".flash.done").count() == 1, tab.page.inner_text("main")
    assert status(engine) == {
        "severity-v1": "retired",
        "severity-v2": "active",
        "severity-v3": ModelStatus.ROLLED_BACK,
    }
    assert "active" in tab.page.inner_text("tr#model-severity-v2")
    assert "active" not in tab.page.inner_text("tr#model-severity-v3")

    tab.go("/admin/audit", shot="audit-after-promote")
    log = tab.page.inner_text("table#audit")
    assert "model.promote" in log
    assert "the golden set is stale" in log  # a forced promotion's reason is kept
    assert "model.rollback" in log


def rollback_button(tab: Tab, task: Task) -> str:
    """The rollback button of ``task``'s form (one per task)."""
    forms = tab.page.locator("form.rollback")
    for index in range(forms.count()):
        form = forms.nth(index)
        if form.locator(f'[name="task"][value="{task.value}"]').count() or task.value in (
            form.get_attribute("action") or ""
        ):
            return f"form.rollback >> nth={index} >> button.rollback"
    raise AssertionError(f"no rollback form for {task.value}: {tab.page.inner_html('main')[:2000]}")


def test_a_flywheel_run_started_on_the_page_is_queued_and_run_by_the_trainer(
    engine: sa.Engine, serve: Serve, tabs: Tabs, tmp_path: Path, tiny_student: TinyStudent
) -> None:
    """The page queues the run on the trainer queue; the test then runs the queued task as the
    trainer's worker would: one real round against the teacher double and a student double that
    loads adapters (the tiny student is fine-tuned for real)."""
    from tests.flywheel.test_flywheel import Student as RunStudent
    from tests.flywheel.test_flywheel import golden_examples, one_round

    with Session(engine) as session:
        golden.add(session, Task.SEVERITY, golden_examples(4), "golden.jsonl")
    with one_round(engine, tmp_path, tiny_student, [], RunStudent([])) as settings:
        served = serve(engine, **{name: getattr(settings, name) for name in settings.model_fields_set})
        tab = tabs(served.url)
        tab.sign_in()
        tab.go("/admin/flywheel")
        assert tab.page.locator("table#runs tr:has(td)").count() == 0
        tab.page.select_option("#start-run select[name=task]", "severity")
        tab.page.fill("#start-run input[name=rounds]", "1")
        tab.submit("#start")
        assert tab.page.locator(".flash.done").count() == 1, tab.page.inner_text("main")

        trainer = TrainerQueue(settings, engine)
        assert trainer.huey.pending_count() == 1
        queued = trainer.huey.dequeue()
        assert queued is not None
        assert (queued.name, tuple(queued.args)) == (
            "flywheel_run",
            ("severity", 1),
        )  # the form's task and rounds
        off_the_loop(lambda: trainer.huey.execute(queued))  # as `reviewbot flywheel worker` runs it

        with Session(engine) as session:
            run = session.exec(select(FlywheelRun)).one()
        assert run.status == RunStatus.DONE, run.error
        tab.go("/admin/flywheel", shot="flywheel-after-run")
        assert rows(tab, "table#runs") == 1
        assert "done" in tab.page.inner_text("table#runs")
        tab.go(f"/admin/flywheel/{run.id}", shot="flywheel-run-after-run")
        assert rows(tab, "table#rounds") == 2  # round 0 (the model in use) and the trained round
        assert tab.page.locator("#rounds-chart svg").count() == 1
        assert tab.page.locator("[data-live-every]").count() == 0  # done: no more reloads
        tab.go("/admin/models")
        assert "canary" in tab.page.inner_text("tr#model-severity-v1")  # the run promoted it: a canary first


def test_every_page_renders_empty(engine: sa.Engine, serve: Serve, tabs: Tabs) -> None:
    served = serve(engine)
    tab = tabs(served.url)
    tab.sign_in()
    for name, path, table in PAGES:
        page = tab.go(path, shot=f"empty-{name}")
        assert page.locator("h1").count() == 1, path
        if name != "health":
            assert page.locator(".empty").count() >= 1, f"{path} does not say it is empty"
            assert rows(tab, table) == 0, path


def test_every_page_renders_with_data(engine: sa.Engine, serve: Serve, tabs: Tabs, tmp_path: Path) -> None:
    with open_site("gitlab", engine) as site:
        world = off_the_loop(lambda: fill(site, tmp_path / "adapters"))
        served = serve(engine, secret_key=SECRET_KEY, flywheel_dir=tmp_path / "fw")
        tab = tabs(served.url)
        tab.sign_in()
        for name, path, table in PAGES:
            page = tab.go(path, shot=f"data-{name}")
            assert page.locator("h1").count() == 1, path
            assert rows(tab, table) >= 1, f"{path}: {table} lists nothing"

        tab.go("/admin/projects")
        for project in (world.project_id, world.hostile_project_id):
            assert tab.page.locator(f"tr#project-{project} a[href='/admin/projects/{project}']").count() >= 1
        assert HOSTILE in tab.page.inner_text("table#projects")  # shown as text, not run

        tab.go(f"/admin/projects/{world.project_id}", shot="data-project")
        for element in (
            "form#settings-form",
            "button#save",
            "#webhook-url",
            "form#rotate-form",
            "button#rotate",
        ):
            assert tab.page.locator(element).count() == 1, element
        tab.go(f"/admin/projects/{world.hostile_project_id}", shot="data-project-hostile")
        assert HOSTILE in tab.page.inner_text("main")
        assert rows(tab, "table#audit") >= 1

        tab.go(f"/admin/reviews?project={world.project_id}", shot="data-reviews-project")
        assert rows(tab, "table#reviews") == 2
        assert tab.page.locator("select#status-filter").count() == 1
        tab.go("/admin/reviews?status=failed")
        assert rows(tab, "table#reviews") == 1
        assert f"the forge said {HOSTILE}" in tab.page.inner_text("table#reviews")

        tab.go(f"/admin/verdicts?project={world.project_id}", shot="data-verdicts-project")
        assert rows(tab, "table#verdicts") >= 1
        assert tab.page.locator("#confusion").count() == 1
        assert tab.page.locator("#trend svg").count() == 1

        tab.go(f"/admin/flywheel/{world.done_run}", shot="data-flywheel-run")
        assert rows(tab, "table#rounds") == 3
        assert tab.page.locator("#rounds-chart svg").count() == 1
        assert tab.page.locator("[data-live-every]").count() == 0
        tab.go(f"/admin/flywheel/{world.live_run}", shot="data-flywheel-run-live")
        assert tab.page.locator("[data-live-every]").count() == 1  # reloads while the run runs

        tab.go("/admin/models")
        for number in (1, 2, 3):
            assert tab.page.locator(f"tr#model-severity-v{number}").count() == 1
        assert tab.page.locator("tr#model-severity-v3 form.promote button.promote").count() == 1
        assert tab.page.locator("form.rollback button.rollback").count() >= 1


def test_the_severity_audit_page_renders_and_says_when_nothing_waits(
    engine: sa.Engine, serve: Serve, tabs: Tabs
) -> None:
    served = serve(engine)
    tab = tabs(served.url)
    tab.sign_in()
    page = tab.go("/admin/severity-audit", shot="empty-severity-audit")
    assert page.locator("h1").count() == 1
    assert page.locator(".empty").count() == 2  # nothing waiting, nothing labelled
    assert rows(tab, "table#audit-labelled") == 0
