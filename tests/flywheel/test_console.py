"""The trainer's console pages and API (``flywheel.console``): flywheel runs listed, one run's rounds and
chart (live while it runs), a run queued on the trainer queue; adapter versions listed, promoted through
the gate or forced with a reason, rolled back; each change in the audit log, each refusal changing
nothing, untrusted text escaped, and nothing answered without the admin token. The gate's model server
is a scripted one (``judge`` asks it as it asks vLLM); no run is executed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from bot.config import Settings
from bot.models import AuditEntry, FlywheelRun, ModelStatus, ModelVersion, RunStatus, Task
from flywheel import data, golden, registry
from flywheel.jobs import RUN_TASK, TrainerQueue
from flywheel.plot import plot_run, run_svg
from flywheel.spec import spec_for
from tests.support.console import Admin, bearer, console_app, sign_in
from tests.support.scripted_server import Reply, Script, completion, scripted_server
from tests.support.secrets import SECRET_KEY
from tests.support.severity_task import MARKERS, make_examples
from tests.support.vllm_server import free_port

HOSTILE = "<script>alert(1)</script>"
BASE = "base-student"
TEACHER = {"teacher_base_url": "http://127.0.0.1:1/v1", "teacher_model": "t"}
WORST = {"critical": "trivial", "major": "minor", "minor": "major", "trivial": "critical"}
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@contextmanager
def console(engine: sa.Engine, **settings: Any) -> Iterator[tuple[Admin, Settings]]:
    app, configured = console_app(engine, **settings)
    with TestClient(app) as client:
        yield sign_in(client), configured


def round_entry(number: int, model: str, heldout: float, **extra: Any) -> dict[str, Any]:
    """A round as ``flywheel.cycle.RoundRecord.to_json`` stores it."""
    return {
        "round": number, "model": model, "exam": {"size": 24, "malformed": 0, "duplicates": 1},
        "exam_score": 0.5, "teacher_score": 6, "feedback": "Confuses minor and trivial.", "new_examples": 40,
        "new_dropped": 2, "curriculum": 100 * number, "heldout": heldout, "detail": {}, "train":
        {"tokens": 5000, "tokens_per_s": 1200.0, "peak_memory_mb": 2048.0, "loss": 0.25},
        "teacher_tokens": 9000, "timings": {"exam": 10.0, "finetune": 50.0}, "golden": 0.8,
        "golden_version": 1, "heldout_metrics": {"cost": 0.4}, **extra,
    }  # fmt: skip


def add_run(engine: sa.Engine, status: RunStatus = RunStatus.DONE, **fields: Any) -> int:
    rounds = [
        {"round": 0, "model": BASE, "heldout": 0.5, "golden": 0.75, "golden_version": 1},
        round_entry(1, "severity-v1", 0.625),
        round_entry(2, "severity-v2", 0.7),
    ]
    values: dict[str, Any] = {"task": "severity", "status": status, "rounds": rounds, "started_at": T0,
                              "outcome": "severity-v2 is promoted", **fields}  # fmt: skip
    with Session(engine) as session:
        run = FlywheelRun(**values)
        session.add(run)
        session.commit()
        assert run.id is not None
        return run.id


def add_version(engine: sa.Engine, name: str, task: str = "severity", **metrics: Any) -> None:
    with Session(engine) as session:
        session.add(ModelVersion(task=task, adapter_name=name, path=f"/a/{name}", base_model=BASE,
                                 metrics=metrics, created_at=T0))  # fmt: skip
        session.commit()


def statuses(engine: sa.Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {v.adapter_name: v.status for v in registry.versions(session)}


def audit_log(engine: sa.Engine) -> list[AuditEntry]:
    with Session(engine) as session:
        return list(session.exec(select(AuditEntry).order_by(col(AuditEntry.id))).all())


def notice(response: Any) -> str:
    """Where a form's redirect goes, with the ``done``/``error`` notice the next page shows, decoded."""
    assert response.status_code == 303, response.text
    return unquote(response.headers["location"])


def queued(settings: Settings, engine: sa.Engine) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """The jobs waiting on the trainer queue, read as the worker reads them."""
    return [(t.name, tuple(t.args), dict(t.kwargs)) for t in TrainerQueue(settings, engine).huey.pending()]


# --- empty, and who may look ------------------------------------------------------------------------


def test_the_pages_say_when_there_is_nothing_yet(engine: sa.Engine) -> None:
    with console(engine) as (admin, _):
        runs = admin.client.get("/admin/flywheel")
        models = admin.client.get("/admin/models")
        assert admin.api("GET", "/api/v1/flywheel/runs").json() == []
        assert admin.api("GET", "/api/v1/models").json() == []
    assert runs.status_code == models.status_code == 200
    assert "<h1>Flywheel</h1>" in runs.text
    assert '<p class="empty">No flywheel runs yet.</p>' in runs.text
    assert 'id="runs"' not in runs.text
    assert 'form id="start-run"' in runs.text
    assert 'button id="start"' in runs.text
    assert "<code>reviewbot flywheel worker</code>, which must be running" in runs.text
    assert "the teacher is not configured" in runs.text  # said before anyone tries
    assert "<h1>Models</h1>" in models.text
    assert '<p class="empty">No adapter versions yet' in models.text
    assert 'class="rollback' not in models.text  # the base model is in use: nothing to roll back
    assert models.text.count("the base model <code>meta-llama/") == 2  # severity and explanation


def test_nothing_answers_without_the_admin_token(engine: sa.Engine) -> None:
    run = add_run(engine)
    add_version(engine, "severity-v1")
    app, settings = console_app(engine, **TEACHER)
    with TestClient(app) as client:
        for page in ("/admin/flywheel", f"/admin/flywheel/{run}", "/admin/models"):
            response = client.get(page, follow_redirects=False)
            assert response.status_code == 303
            assert response.headers["location"].startswith("/admin/login?next=")
        for path in ("/admin/flywheel/start", "/admin/models/promote", "/admin/models/rollback"):
            response = client.post(
                path, data={"task": "severity", "name": "severity-v1"}, follow_redirects=False
            )
            assert response.headers["location"].startswith("/admin/login")
        calls = [("GET", "/api/v1/flywheel/runs", None), ("GET", f"/api/v1/flywheel/runs/{run}", None),
                 ("POST", "/api/v1/flywheel/runs", {"task": "severity"}), ("GET", "/api/v1/models", None),
                 ("POST", "/api/v1/models/severity-v1/promote", {"force": True, "reason": "r"}),
                 ("POST", "/api/v1/models/severity/rollback", None)]  # fmt: skip
        for method, path, body in calls:
            assert client.request(method, path, json=body).status_code == 401, path
            wrong = client.request(method, path, json=body, headers=bearer("wrong-token"))
            assert wrong.status_code == 401, path
        assert client.get("/api/v1/flywheel/runs", headers=bearer()).status_code == 200
        admin = sign_in(client)
        # Signed in, but a change without the session's CSRF token is refused.
        assert admin.client.post("/api/v1/flywheel/runs", json={"task": "severity"}).status_code == 403
        stale = admin.client.post("/admin/models/rollback", data={"task": "severity", "csrf_token": "x"})
        assert stale.status_code == 403
        forced = admin.client.post("/admin/models/promote",
                                   data={"name": "severity-v1", "force": "on", "reason": "r"})  # fmt: skip
        assert forced.status_code == 403
    assert queued(settings, engine) == []
    assert statuses(engine) == {"severity-v1": ModelStatus.CANDIDATE}
    assert audit_log(engine) == []


# --- runs ---------------------------------------------------------------------------------------------


def test_runs_are_listed_and_a_run_shows_its_rounds_with_the_reports_chart(engine: sa.Engine) -> None:
    done = add_run(engine)
    failed = add_run(engine, RunStatus.FAILED, rounds=[], outcome=None, error="the teacher is unreachable")
    with console(engine) as (admin, _):
        page = admin.client.get("/admin/flywheel").text
        run_page = admin.client.get(f"/admin/flywheel/{done}").text
        empty_page = admin.client.get(f"/admin/flywheel/{failed}").text
        listed = admin.api("GET", "/api/v1/flywheel/runs").json()
        one = admin.api("GET", f"/api/v1/flywheel/runs/{done}").json()
        missing = admin.api("GET", "/api/v1/flywheel/runs/999")
        gone = admin.client.get("/admin/flywheel/999", follow_redirects=False)
        limited = admin.api("GET", "/api/v1/flywheel/runs?limit=1").json()
        assert admin.api("GET", "/api/v1/flywheel/runs?limit=0").status_code == 422
    table = page[page.index('<table id="runs">') :]
    assert table.index(f'id="run-{failed}"') < table.index(f'id="run-{done}"')  # newest first
    row = table[table.index(f'id="run-{done}"') :].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert [re.sub("<[^>]+>", "", c).strip() for c in cells] == [
        str(done),
        "severity",
        "done",
        "2026-03-02 09:30",
        "",
        "2",
        "0.500",
        "0.700",
        "severity-v2 is promoted",
    ]
    assert f'href="/admin/flywheel/{done}"' in row
    assert "the teacher is unreachable" in table
    # The run's rounds, as `reviewbot flywheel report` lists them.
    rounds = run_page[run_page.index('<table id="rounds">') :]
    assert rounds.count("<tr>") == 4  # the header and rounds 0, 1, 2
    second = re.sub(r"<[^>]+>", " ", rounds.split("<tr>")[4].split("</tr>")[0]).split()
    assert second[:12] == ["2", "severity-v2", "0.700", "0.400", "0.800", "(v1)", "50%", "6", "40", "200",
                           "0.250", "60"]  # fmt: skip
    assert "Confuses minor and trivial." in rounds
    assert "data-live-every" not in run_page  # done: nothing changes any more
    # The chart: plot_run's drawing, inlined as SVG the page's CSP allows (no prolog, no inline style).
    chart = run_page[run_page.index('<figure id="rounds-chart"') : run_page.index("</figure>")]
    assert chart.count("<svg") == 1
    assert "<?xml" not in chart
    assert "<!DOCTYPE" not in chart
    assert "style=" not in chart
    assert "<style" not in chart
    assert 'stroke="#1f77b4"' in chart  # the held-out line's colour, as an attribute
    assert "<h1>Flywheel run" in run_page
    assert '<p class="empty">No rounds yet' in empty_page
    assert "<svg" not in empty_page
    assert "the teacher is unreachable" in empty_page
    # The API says the same.
    assert [r["id"] for r in listed] == [failed, done]
    assert [r["id"] for r in limited] == [failed]
    summary = next(r for r in listed if r["id"] == done)
    assert (summary["rounds_done"], summary["baseline_heldout"], summary["best_heldout"]) == (2, 0.5, 0.7)
    assert one["rounds"][2]["model"] == "severity-v2"
    assert one["outcome"] == "severity-v2 is promoted"
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no flywheel run 999"
    assert gone.headers["location"] == "/admin/flywheel?error=no%20flywheel%20run%20999"


def test_a_running_runs_page_reloads_itself(engine: sa.Engine) -> None:
    run = add_run(engine, RunStatus.RUNNING, outcome=None, started_at=datetime.now(UTC))
    with console(engine) as (admin, _):
        page = admin.client.get(f"/admin/flywheel/{run}").text
    assert re.search(r'<section id="run"[^>]* data-live-every="5"', page)
    assert "reloads every 5 s" in page


def test_the_chart_is_the_reports_and_the_report_writes_svg_too(engine: sa.Engine, tmp_path: Path) -> None:
    add_run(engine)
    with Session(engine) as session:
        run = session.exec(select(FlywheelRun)).one()
    png, svg = plot_run(run, tmp_path / "run.png"), plot_run(run, tmp_path / "out" / "run.svg")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert svg.read_text().startswith("<?xml")
    inline = run_svg(run)
    assert inline.startswith("<svg ")
    assert 'role="img"' in inline
    # The same drawing: as many line and marker paths as the file the report writes.
    assert inline.count("<path") == svg.read_text().count("<path")


def test_a_run_is_queued_on_the_trainer_queue_and_refused_while_one_waits_or_runs(
    engine: sa.Engine,
) -> None:
    with console(engine, **TEACHER) as (admin, settings):
        bad = [
            admin.form("/admin/flywheel/start", {"task": "severity", "rounds": r}) for r in ("0", "x", "99")
        ]
        unknown = admin.form("/admin/flywheel/start", {"task": "find", "rounds": "2"})
        bodies = ({"task": "find"}, {"task": "severity", "rounds": 0}, {"tasks": "severity"})
        api_bad = [admin.api("POST", "/api/v1/flywheel/runs", json=body) for body in bodies]
        assert queued(settings, engine) == []
        started = admin.form("/admin/flywheel/start", {"task": "severity", "rounds": "3"})
        page = admin.client.get("/admin/flywheel").text
        again = admin.api("POST", "/api/v1/flywheel/runs", json={"task": "explanation"})
        again_form = admin.form("/admin/flywheel/start", {"task": "severity", "rounds": ""})
        assert queued(settings, engine) == [(RUN_TASK, ("severity", 3), {})]
        TrainerQueue(settings, engine).huey.flush()  # the worker took it, and the run began
        running = add_run(engine, RunStatus.RUNNING, started_at=datetime.now(UTC))
        during = admin.api("POST", "/api/v1/flywheel/runs", json={"task": "severity"})
        with Session(engine) as session:
            run = session.get(FlywheelRun, running)
            assert run is not None
            run.status = RunStatus.DONE
            session.add(run)
            session.commit()
        by_api = admin.api("POST", "/api/v1/flywheel/runs", json={"task": "explanation"})
        assert queued(settings, engine) == [(RUN_TASK, ("explanation", None), {})]
    assert all("rounds must be a whole number from 1 to 50" in notice(r) for r in bad)
    assert "unknown task 'find'" in notice(unknown)
    assert [r.status_code for r in api_bad] == [422, 422, 422]
    assert notice(started).startswith("/admin/flywheel?done=a severity run is queued (3 rounds")
    assert '<ul id="queued"><li>severity run queued, 3 rounds at most' in page
    assert again.status_code == 409
    assert again.json()["detail"] == (
        "a flywheel run is already queued: it starts once `reviewbot flywheel worker` runs"
    )
    assert "already queued" in notice(again_form)
    assert during.status_code == 409
    assert during.json()["detail"] == f"flywheel run {running} (severity) is running: wait until it ends"
    assert by_api.status_code == 202
    assert by_api.json()["task"] == "explanation"
    assert by_api.json()["rounds"] is None
    assert "reviewbot flywheel worker" in by_api.json()["detail"]
    entries = [(e.actor, e.action, e.target, e.after) for e in audit_log(engine)]
    assert entries == [
        ("admin token", "flywheel.start", "flywheel severity", {"task": "severity", "rounds": 3}),
        ("admin token", "flywheel.start", "flywheel explanation", {"task": "explanation", "rounds": None}),
    ]


def test_no_run_is_queued_without_a_teacher(engine: sa.Engine) -> None:
    with console(engine) as (admin, settings):
        by_form = admin.form("/admin/flywheel/start", {"task": "severity", "rounds": "2"})
        by_api = admin.api("POST", "/api/v1/flywheel/runs", json={"task": "severity"})
    assert "the teacher is not configured" in notice(by_form)
    assert by_api.status_code == 409
    assert by_api.json()["detail"] == (
        "the teacher is not configured: set REVIEWBOT_TEACHER_BASE_URL and REVIEWBOT_TEACHER_MODEL"
    )
    assert queued(settings, engine) == []
    assert audit_log(engine) == []


# --- models ------------------------------------------------------------------------------------------


class Student(Script):
    """vLLM as ``judge`` asks it: it loads the adapters it lacks, and each model rates every item
    right or every item wrong."""

    def __init__(self, right: set[str]) -> None:
        super().__init__([])
        self.right = right

    def next_reply(self, request: dict[str, Any]) -> Reply:
        super().next_reply(request)
        if str(request["path"]).endswith(("/load_lora_adapter", "/unload_lora_adapter")):
            return Reply(200, {})
        prompt = str(request["messages"][-1]["content"])
        marker = re.search(rf"\b({'|'.join(MARKERS)})\b", prompt)
        assert marker is not None, prompt
        label = MARKERS[marker[1]]
        return completion(
            json.dumps({"issue_type": label if request["model"] in self.right else WORST[label]})
        )


def with_golden_set(engine: sa.Engine) -> None:
    spec = spec_for(Task.SEVERITY)
    examples = [data.parse_example(spec, e, "golden") for e in make_examples(8, seed=5)]
    with Session(engine) as session:
        golden.add(session, Task.SEVERITY, examples, "golden.jsonl")


def test_a_promotion_follows_the_gate_and_a_forced_one_needs_a_reason(engine: sa.Engine) -> None:
    for name in ("severity-v1", "severity-v2", "severity-v3"):
        add_version(engine, name, heldout=0.7)
    with_golden_set(engine)
    gate = {"student_model": BASE, "promotion_min_items": 8, "llm_max_retries": 0}
    with (
        scripted_server(Student({"severity-v1"})) as url,
        console(engine, student_base_url=url, **gate) as (
            admin,
            _,
        ),
    ):
        page = admin.client.get("/admin/models").text
        refused = admin.form("/admin/models/promote", {"name": "severity-v2"})
        refused_api = admin.api("POST", "/api/v1/models/severity-v2/promote", json={})
        no_reason = admin.form("/admin/models/promote", {"name": "severity-v2", "force": "on", "reason": " "})
        no_reason_api = admin.api("POST", "/api/v1/models/severity-v2/promote", json={"force": True})
        unknown = admin.api("POST", "/api/v1/models/severity-v9/promote", json={"force": True, "reason": "r"})
        unknown_form = admin.form("/admin/models/promote", {"name": "severity-v9"})
        assert admin.api("POST", "/api/v1/models/x/promote", json={"forced": True}).status_code == 422
        assert statuses(engine) == dict.fromkeys(
            ("severity-v1", "severity-v2", "severity-v3"), ModelStatus.CANDIDATE
        )
        assert audit_log(engine) == []
        passed = admin.api("POST", "/api/v1/models/severity-v1/promote", json={"canary": False})
        forced = admin.form(  # all traffic at once: the canary is tested in tests/feedback/test_canary.py
            "/admin/models/promote",
            {"name": "severity-v2", "force": "on", "reason": "hotfix <b>", "no_canary": "on"},
        )
        again = admin.api("POST", "/api/v1/models/severity-v2/promote", json={})
        after = admin.client.get("/admin/models").text
        listed = admin.api("GET", "/api/v1/models").json()
    # The page: a promote form per version, asking first.
    assert page.count('<form class="promote"') == 3
    assert re.search(
        r'<tr id="model-severity-v1">.*?data-confirm="Make severity-v1 the severity model\?"', page, re.S
    )
    assert 'name="force"' in page
    assert 'name="reason"' in page
    assert 'class="promote">Promote</button>' in page
    # Refused by the gate, with its reason, through either door.
    assert "severity-v2 is not promoted: not better beyond chance" in notice(refused)
    assert refused_api.status_code == 409
    assert refused_api.json()["detail"].startswith("severity-v2 is not promoted: not better beyond chance")
    assert "needs a reason" in notice(no_reason)
    assert no_reason_api.status_code == 422
    assert no_reason_api.json()["detail"].startswith("a forced promotion needs a reason")
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == "no model version named 'severity-v9'"
    assert "no model version named" in notice(unknown_form)
    # Passed the gate; then forced, with the reason in the audit log.
    assert passed.status_code == 200, passed.text
    body = passed.json()
    assert (body["version"]["name"], body["version"]["status"], body["previous"], body["changed"]) == (
        "severity-v1", "active", None, True,
    )  # fmt: skip
    assert body["gate"].startswith("severity-v1 gains")
    assert f"over {BASE} on 8 test items" in body["gate"]
    assert "severity-v2 is now the severity model: forced (hotfix <b>)" in notice(forced)
    assert again.json()["changed"] is False
    assert again.json()["detail"] == "severity-v2 is already the severity model"
    assert statuses(engine) == {"severity-v1": ModelStatus.RETIRED, "severity-v2": ModelStatus.ACTIVE,
                                "severity-v3": ModelStatus.CANDIDATE}  # fmt: skip
    assert {v["name"]: v["status"] for v in listed}["severity-v2"] == "active"
    assert '<tr id="model-severity-v2">' in after
    assert "in-use-severity" in after
    [gated, by_force] = audit_log(engine)
    assert (gated.actor, gated.action, gated.target, gated.before) == (
        "admin token", "model.promote", "severity model", {"active": None},
    )  # fmt: skip
    assert gated.after["active"] == "severity-v1"
    assert gated.after["forced"] is False
    assert gated.after["gate"] == body["gate"]
    assert (by_force.before, by_force.after) == (
        {"active": "severity-v1"}, {"active": "severity-v2", "forced": True, "reason": "hotfix <b>"},
    )  # fmt: skip


def test_a_promotion_is_not_forced_past_a_model_server_that_is_down(engine: sa.Engine) -> None:
    add_version(engine, "severity-v1")
    with_golden_set(engine)
    down = {"student_base_url": f"http://127.0.0.1:{free_port()}/v1", "llm_max_retries": 0}
    with console(engine, **down) as (admin, _):
        by_api = admin.api("POST", "/api/v1/models/severity-v1/promote", json={"force": False})
        by_form = admin.form("/admin/models/promote", {"name": "severity-v1"})
    assert by_api.status_code == 503
    assert "the models must be served by vLLM" in by_api.json()["detail"]
    assert "served by vLLM" in notice(by_form)
    assert statuses(engine) == {"severity-v1": ModelStatus.CANDIDATE}
    assert audit_log(engine) == []


def test_a_rollback_walks_back_through_form_and_api(engine: sa.Engine) -> None:
    for name in ("severity-v1", "severity-v2"):
        add_version(engine, name)
    with Session(engine) as session:
        registry.promote(session, "severity-v1", force=True)
        registry.promote(session, "severity-v2", force=True)
    with console(engine) as (admin, _):
        page = admin.client.get("/admin/models").text
        unknown = admin.api("POST", "/api/v1/models/find/rollback")
        unknown_form = admin.form("/admin/models/rollback", {"task": "bogus"})
        by_form = admin.form("/admin/models/rollback", {"task": "severity"})
        by_api = admin.api("POST", "/api/v1/models/severity/rollback")
        nothing = admin.api("POST", "/api/v1/models/severity/rollback")
        nothing_form = admin.form("/admin/models/rollback", {"task": "severity"})
        after = admin.client.get("/admin/models").text
    assert page.count('<form class="rollback') == 1  # severity only: explanation uses the base model
    assert 'data-confirm="Roll back severity from severity-v2?' in page
    assert '<button class="rollback">' in page
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == "unknown task 'find': the flywheel trains severity and explanation"
    assert "unknown task 'bogus'" in notice(unknown_form)
    assert notice(by_form) == (
        "/admin/models?done=severity rolled back from severity-v2: severity-v1 is in use"
    )
    assert by_api.status_code == 200
    assert by_api.json() == {
        "task": "severity", "rolled_back": "severity-v1", "active": None,
        "detail": "severity rolled back from severity-v1: the base model "
        "meta-llama/Meta-Llama-3-8B-Instruct is in use",
    }  # fmt: skip
    assert nothing.status_code == 409
    assert nothing.json()["detail"] == "no active severity version to roll back; the base model is in use"
    assert "base model is in use" in notice(nothing_form)
    assert 'class="rollback' not in after
    entries = [(e.action, e.target, e.before, e.after) for e in audit_log(engine)]
    assert entries == [
        ("model.rollback", "severity model", {"active": "severity-v2"},
         {"active": "severity-v1", "rolled_back": "severity-v2"}),
        ("model.rollback", "severity model", {"active": "severity-v1"},
         {"active": None, "rolled_back": "severity-v1"}),
    ]  # fmt: skip
    assert statuses(engine) == {
        "severity-v1": ModelStatus.ROLLED_BACK,
        "severity-v2": ModelStatus.ROLLED_BACK,
    }


# --- untrusted text ---------------------------------------------------------------------------------


def test_untrusted_text_is_escaped(engine: sa.Engine) -> None:
    hostile_round = round_entry(1, f"severity-v1{HOSTILE}", 0.6, feedback=f"Grade: {HOSTILE}")
    run = add_run(
        engine, rounds=[{"round": 0, "model": HOSTILE, "heldout": 0.5}, hostile_round],
        outcome=f"outcome {HOSTILE}", error='"><img src=x onerror=alert(2)>',
    )  # fmt: skip
    add_version(engine, f"v{HOSTILE}", heldout=0.5)
    with console(engine, student_model=f"m{HOSTILE}") as (admin, _):
        pages = [
            admin.client.get(p).text for p in ("/admin/flywheel", f"/admin/flywheel/{run}", "/admin/models")
        ]
        refused = admin.form("/admin/models/promote", {"name": HOSTILE, "force": "on", "reason": "r"})
        shown = admin.client.get(refused.headers["location"]).text
    for page in [*pages, shown]:
        assert HOSTILE not in page
        assert "<img src=x" not in page
    assert "outcome &lt;script&gt;alert(1)&lt;/script&gt;" in pages[0]
    assert "Grade: &lt;script&gt;" in pages[1]
    assert 'id="model-v&lt;script&gt;alert(1)&lt;/script&gt;"' in pages[2]
    assert "no model version named &#39;&lt;script&gt;" in shown
    chart = pages[1][pages[1].index("<svg") : pages[1].index("</svg>")]
    assert "<script" not in chart  # its text is drawn as glyphs; what remains is XML-escaped


# --- the command line: the same functions, the same audit entries --------------------------------------


def test_the_cli_forces_a_promotion_only_with_a_reason_and_logs_it_and_a_rollback(
    engine: sa.Engine, tmp_path: Path
) -> None:
    add_version(engine, "severity-v1")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REVIEWBOT_HOME": str(tmp_path / "home"),
           "REVIEWBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False),
           "REVIEWBOT_SECRET_KEY": SECRET_KEY, "USER": "ana", "LOGNAME": "ana", "COLUMNS": "200"}  # fmt: skip

    def reviewbot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", *args], env=env, capture_output=True, text=True
        )

    bare = reviewbot("models", "promote", "severity-v1", "--force")
    assert bare.returncode == 2
    assert "a forced promotion needs a reason" in bare.stderr
    assert "--reason" in bare.stderr
    assert audit_log(engine) == []
    forced = reviewbot(
        "models", "promote", "severity-v1", "--force", "--reason", "the gate's server is down", "--no-canary"
    )
    assert forced.returncode == 0, forced.stderr
    assert "severity-v1 is now the severity model" in forced.stdout
    rolled = reviewbot("models", "rollback", "severity")
    assert rolled.returncode == 0, rolled.stderr
    assert "severity rolled back: the base model" in rolled.stdout
    entries = [(e.actor, e.action, e.before, e.after) for e in audit_log(engine)]
    assert entries == [
        ("cli:ana", "model.promote", {"active": None},
         {"active": "severity-v1", "forced": True, "reason": "the gate's server is down"}),
        ("cli:ana", "model.rollback", {"active": "severity-v1"},
         {"active": None, "rolled_back": "severity-v1"}),
    ]  # fmt: skip
