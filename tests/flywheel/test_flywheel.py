"""The flywheel's steps, each with a well-behaved and a misbehaving teacher (no vLLM here)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from bot.config import load_settings
from bot.events import SignalKind
from bot.feedback.signals import record_signal
from bot.llm import LLMBadAnswer, LLMClient, LLMRejected, LLMUnavailable
from bot.models import (
    ExampleSource,
    ExampleSplit,
    Finding,
    FlywheelRun,
    ModelStatus,
    ModelVersion,
    RunStatus,
    Task,
)
from flywheel import data, registry
from flywheel.curriculum import build_curriculum
from flywheel.cycle import Plan, RoundRecord, TrainStats, round_zero, run_flywheel, stalled
from flywheel.data import DataError, Example
from flywheel.evaluate import Grade, accuracy, grade_exam, preference, score
from flywheel.exam import Exam, TeacherError, write_exam
from flywheel.spec import spec_for
from flywheel.take import Attempt
from tests.feedback.test_labels import add_finding
from tests.support.db import session_scope
from tests.support.scripted_server import Script, completion, scripted_server
from tests.support.severity_task import MARKERS, make_examples
from tests.support.teacher_server import MODEL, Teacher, teacher_server
from tests.support.tiny_model import TinyStudent
from tests.support.vllm_server import free_port

SEVERITY = spec_for(Task.SEVERITY)


def examples(count: int, seed: int = 0) -> list[Example]:
    return [data.parse_example(SEVERITY, e, "test") for e in make_examples(count, seed)]


@pytest.fixture
def teacher() -> Teacher:
    return Teacher()


@pytest.fixture
def teacher_url(teacher: Teacher) -> Iterator[str]:
    with teacher_server(teacher) as url:
        yield url


def client(url: str) -> LLMClient:
    """A client per event loop: each ``asyncio.run`` below is a loop of its own."""
    return LLMClient(url, "key", role="teacher", max_retries=1, backoff_s=0.01)


def exam(url: str, known: set[str] = frozenset(), count: int = 12, max_tokens: int = 8192) -> Exam:  # type: ignore[assignment]
    return asyncio.run(
        write_exam(
            client(url),
            MODEL,
            SEVERITY,
            count=count,
            data=examples(4),
            complaints=[],
            proficiency="not examined yet",
            feedback=None,
            known=set(known),
            rng=random.Random(0),
            max_tokens=max_tokens,
        )
    )


# --- data -----------------------------------------------------------------------------------------


def test_a_bad_line_is_named_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "seed.jsonl"
    good = json.dumps(make_examples(1)[0])
    path.write_text(
        good + "\n\n" + good.replace("critical", "catastrophic").replace("major", "catastrophic") + "\n"
    )
    with pytest.raises(DataError, match=r"seed.jsonl:3: answer is not a severity answer: issue_type"):
        data.read_jsonl(path, SEVERITY)
    path.write_text("{not json\n")
    with pytest.raises(DataError, match=r"seed.jsonl:1: not JSON"):
        data.read_jsonl(path, SEVERITY)


def test_the_key_ignores_whitespace() -> None:
    assert data.question_key({"code": "a  b", "review": "x"}) == data.question_key(
        {"review": "x ", "code": "a b"}
    )


def test_a_held_out_example_stays_held_out(engine: sa.Engine) -> None:
    seed = examples(200)
    with Session(engine) as session:
        assert data.store(session, SEVERITY, seed, ExampleSource.SEED, heldout_share=0.2) == 200
        first = data.task_data(session, SEVERITY)
        assert 20 <= len(first.heldout) <= 60  # about a fifth
        # Seen again (and a teacher's copy of a held-out question): nothing moves, nothing is added.
        assert data.store(session, SEVERITY, seed, ExampleSource.SEED, heldout_share=0.9) == 0
        assert data.store(session, SEVERITY, first.heldout[:3], ExampleSource.TEACHER) == 0
        again = data.task_data(session, SEVERITY)
    assert [e.key for e in again.heldout] == [e.key for e in first.heldout]


def test_feedback_export_is_read_back_and_a_later_correction_wins(engine: sa.Engine, tmp_path: Path) -> None:
    confirmed, corrected = add_finding(engine), add_finding(engine)
    with session_scope(engine) as session:  # two different questions
        session.get(Finding, corrected).review = "The handle leaks on error."  # type: ignore[union-attr]
    with session_scope(engine) as session:
        record_signal(session, confirmed, SignalKind.REACTION, "+1", "ana", "a1")
        record_signal(session, corrected, SignalKind.SEVERITY, "minor", "bo", "c1")
    out = tmp_path / "export.jsonl"
    env = {
        "REVIEWBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(
        [sys.executable, "-m", "bot.cli", "feedback", "export", "--out", str(out)], env=env, check=True
    )
    exported = data.read_jsonl(out, SEVERITY)
    assert [e.answer["issue_type"] for e in exported] == ["major", "minor"]
    assert exported[1].meta["label_state"] == "corrected"
    # The loader of the flywheel reads the same rows straight from the database.
    from_db = data.feedback_examples(engine, SEVERITY)
    assert [e.to_json() for e in from_db] == [e.to_json() for e in exported]
    with Session(engine) as session:
        data.store(session, SEVERITY, from_db, ExampleSource.FEEDBACK, split=ExampleSplit.TRAIN)
    with session_scope(engine) as session:
        record_signal(session, confirmed, SignalKind.SEVERITY, "trivial", "cy", "c2")
    with Session(engine) as session:
        data.store(session, SEVERITY, data.feedback_examples(engine, SEVERITY), ExampleSource.FEEDBACK)
        stored = data.task_data(session, SEVERITY).train
    assert sorted(e.answer["issue_type"] for e in stored) == ["minor", "trivial"]


def test_rejected_findings_are_material_for_the_teacher(engine: sa.Engine) -> None:
    dismissed = add_finding(engine)
    with session_scope(engine) as session:
        record_signal(session, dismissed, SignalKind.DISMISS, "the input is trusted", "ana", "d1")
    [complaint] = data.complaints(engine)
    assert complaint["reviewers"] == "dismissed"
    assert complaint["reasons"] == ["the input is trusted"]


# --- exam -----------------------------------------------------------------------------------------


def test_the_teacher_writes_an_exam(teacher_url: str, teacher: Teacher) -> None:
    result = exam(teacher_url, count=12)
    assert len(result.items.examples) == 12
    assert {e.answer["issue_type"] for e in result.items.examples} == set(MARKERS.values())
    prompt = teacher.prompts[0]
    assert "{code}" in prompt
    assert "not examined yet" in prompt
    assert "Write 12 new exam questions" in prompt
    assert result.teacher_tokens > 0


def test_a_big_exam_is_asked_for_in_parts_that_fit_the_teachers_output(
    teacher_url: str, teacher: Teacher
) -> None:
    result = exam(teacher_url, count=12, max_tokens=2200)  # room for 5 items an answer
    assert len(result.items.examples) == 12
    assert teacher.calls["exam"] == 3
    assert sorted(re.findall(r"Write (\d+) new exam", "".join(teacher.prompts))) == ["2", "5", "5"]
    graded = grade(teacher_url, attempts(["minor"] * 4), data=[], count=10, max_tokens=2800)
    assert len(graded.new.examples) == 10
    assert teacher.calls["grade"] == 2


def test_known_questions_are_not_asked_again(teacher_url: str, teacher: Teacher) -> None:
    first = exam(teacher_url, count=12)
    teacher.rng = random.Random(teacher.seed)  # the double writes the same questions again
    second = exam(teacher_url, known={e.key for e in first.items.examples[:5]}, count=12)
    assert (len(second.items.examples), second.items.duplicates) == (7, 5)


@pytest.mark.parametrize(
    ("faults", "kept", "malformed", "duplicates"),
    [
        (["wrong_labels"], 6, 6, 0),  # every other item has an unknown label
        (["duplicates"], 1, 0, 11),
        (["invalid_json"], 12, 0, 0),  # the second try is good
    ],
)
def test_bad_items_are_dropped_and_counted(
    teacher_url: str, teacher: Teacher, faults: list[str], kept: int, malformed: int, duplicates: int
) -> None:
    teacher.faults = faults
    result = exam(teacher_url, count=12)
    assert (len(result.items.examples), result.items.malformed, result.items.duplicates) == (
        kept,
        malformed,
        duplicates,
    )


@pytest.mark.parametrize(
    ("faults", "error"), [(["empty"], TeacherError), (["invalid_json"] * 2, LLMBadAnswer)]
)
def test_an_unusable_exam_is_an_error(
    teacher_url: str, teacher: Teacher, faults: list[str], error: type[Exception]
) -> None:
    teacher.faults = faults
    with pytest.raises(error, match=r"no usable exam question|not JSON"):
        exam(teacher_url)


def test_an_unreachable_teacher_is_named() -> None:
    with pytest.raises(LLMUnavailable, match=r"teacher model server at http://127.0.0.1"):
        exam(f"http://127.0.0.1:{free_port()}/v1")


# --- evaluate -------------------------------------------------------------------------------------


def attempts(answers: list[str]) -> list[Attempt]:
    return [Attempt(e, {"issue_type": a}) for e, a in zip(examples(len(answers)), answers, strict=True)]


def test_accuracy_is_counted_per_label() -> None:
    # make_examples cycles through the markers: critical ×3, then major ×3 …
    score = accuracy(
        [*attempts(["critical", "critical", "minor", "major"]), Attempt(examples(1)[0], None, "down")]
    )
    assert score.value == pytest.approx(3 / 5)
    assert score.by_label == {"critical": (2, 4), "major": (1, 1)}
    assert score.failed == 1


def grade(url: str, sitting: list[Attempt], data: list[Example], count: int, max_tokens: int = 8192) -> Grade:
    return asyncio.run(
        grade_exam(client(url), MODEL, SEVERITY, sitting, accuracy(sitting), data=data, count=count,
                   known=set(), rng=random.Random(0), max_tokens=max_tokens)
    )  # fmt: skip


def test_the_teacher_grades_and_aims_new_examples_at_mistakes(teacher_url: str, teacher: Teacher) -> None:
    sitting = attempts(["critical"] * 12)  # right only on the three critical markers
    graded = grade(teacher_url, sitting, data=examples(3, seed=9), count=10)
    assert graded.proficiency == 1 + round(9 * 3 / 12)
    assert "Leaks" in graded.feedback
    assert "Corrupts" not in graded.feedback
    assert len(graded.new.examples) == 10
    assert not {e.key for e in graded.new.examples} & {a.example.key for a in sitting}
    assert '"correct": false' in teacher.prompts[0]
    assert "25% (3 of 12)" in teacher.prompts[0]


def test_a_grade_without_feedback_is_an_error(teacher_url: str, teacher: Teacher) -> None:
    teacher.faults = ["no_feedback"]
    sitting = attempts(["minor"] * 4)
    with pytest.raises(TeacherError, match="no written feedback"):
        grade(teacher_url, sitting, data=[], count=2)


def test_explanations_are_judged_pairwise_in_random_order(teacher_url: str) -> None:
    question = {"code": "1 +x = 1", "review": "Leaks the handle.", "issue_type": "major"}
    reference = {"explanation": "A long reference explanation of the leak."}
    example = Example(question, reference)
    sitting = [
        Attempt(example, {"explanation": "Short."}),
        Attempt(example, {"explanation": "x" * 200}),
        Attempt(example, None, "down"),
    ]
    score = asyncio.run(preference(client(teacher_url), MODEL, sitting, random.Random(3)))
    assert score.verdicts == [1.0, 0.0, 0.0]  # the double prefers the shorter one, whichever side it is on


def test_explanations_can_be_judged_against_a_reference_model(teacher_url: str) -> None:
    spec = spec_for(Task.EXPLANATION)
    question = {"code": "1 +x = 1", "review": "Leaks the handle.", "issue_type": "major"}
    sitting = [Attempt(Example(question, {"explanation": "Tiny."}), {"explanation": "A short explanation."})]
    alone = asyncio.run(score(spec, sitting, client(teacher_url), MODEL, random.Random(0)))
    judged = asyncio.run(score(spec, sitting, client(teacher_url), MODEL, random.Random(0), "reference-70b"))
    assert (alone.verdicts, judged.verdicts) == ([0.0], [1.0])  # the double's reference answer is longer


# --- curriculum -----------------------------------------------------------------------------------


def test_the_curriculum_dedupes_keeps_held_out_out_and_goes_easy_to_hard() -> None:
    base = examples(6)
    teacher_copy = Example(base[0].question, {"issue_type": "trivial"}, difficulty=1)
    hard, easy = (Example(e.question, e.answer, d) for e, d in zip(examples(2, seed=5), (5, 1), strict=True))
    merged = build_curriculum(base[:4], [teacher_copy, hard, easy, base[5]], heldout_keys={base[5].key})
    assert merged[0] == easy
    assert merged[-1] == hard
    assert base[0] in merged  # the reviewers' label wins
    assert teacher_copy not in merged
    assert base[5] not in merged
    assert len(merged) == 6


# --- registry -------------------------------------------------------------------------------------


def version(session: Session, name: str, heldout: float, baseline: float = 0.25) -> ModelVersion:
    row = ModelVersion(
        task="severity",
        adapter_name=name,
        path=f"/a/{name}",
        base_model="b",
        metrics={"heldout": heldout, "baseline": baseline, "baseline_model": "base"},
    )
    session.add(row)
    session.commit()
    return row


def test_names_are_never_reused(engine: sa.Engine, tmp_path: Path) -> None:
    with Session(engine) as session:
        assert registry.next_adapter_name(session, Task.SEVERITY, tmp_path) == "severity-v1"
        version(session, "severity-v2", 0.5)
        (tmp_path / "severity-v7").mkdir()  # a run that failed after training
        assert registry.next_adapter_name(session, Task.SEVERITY, tmp_path) == "severity-v8"


def test_promotion_needs_the_margin_and_rollback_walks_back(engine: sa.Engine) -> None:
    with Session(engine) as session:
        for name, score in (
            ("severity-v1", 0.5),
            ("severity-v2", 0.51),
            ("severity-v3", 0.7),
            ("severity-v4", 0.9),
        ):
            version(session, name, score)
        with pytest.raises(registry.PromotionRefused, match=r"the base model base scores 0.250"):
            registry.promote(session, "severity-v1", margin=0.3)
        registry.promote(session, "severity-v1", margin=0.02)
        with pytest.raises(registry.PromotionRefused, match=r"severity-v2 scores 0.510 .* needs 0.520"):
            registry.promote(session, "severity-v2", margin=0.02)
        registry.promote(session, "severity-v2", margin=0.02, force=True)
        registry.promote(session, "severity-v3", margin=0.02)
        assert registry.active_version(session, Task.SEVERITY).adapter_name == "severity-v3"  # type: ignore[union-attr]
        assert registry.rollback(session, Task.SEVERITY).adapter_name == "severity-v2"  # type: ignore[union-attr]
        registry.promote(session, "severity-v4", margin=0.02)
        # v3 was rolled back: walking back from v4 skips it.
        assert registry.rollback(session, Task.SEVERITY).adapter_name == "severity-v2"  # type: ignore[union-attr]
        assert registry.rollback(session, Task.SEVERITY).adapter_name == "severity-v1"  # type: ignore[union-attr]
        assert registry.rollback(session, Task.SEVERITY) is None
        with pytest.raises(LookupError, match="base model is in use"):
            registry.rollback(session, Task.SEVERITY)
        # A run measures the model in use on today's held-out set and passes that score.
        with pytest.raises(registry.PromotionRefused, match=r"model in use \(base\) scores 0.950"):
            registry.promote(session, "severity-v4", margin=0.02, reference=0.95)
        statuses = {v.adapter_name: v.status for v in registry.versions(session)}
    assert statuses["severity-v3"] == ModelStatus.ROLLED_BACK


def test_an_adapter_vllm_cannot_load_is_not_registered(engine: sa.Engine, tmp_path: Path) -> None:
    adapter = tmp_path / "severity-v1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "use_dora": True}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    student = LLMClient("http://127.0.0.1:1/v1", "k", role="student", max_retries=0)
    from flywheel.finetune import AdapterIncompatible

    with Session(engine) as session:
        with pytest.raises(AdapterIncompatible, match="DoRA"):
            asyncio.run(registry.register(session, student, Task.SEVERITY, adapter, "b", 16))
        (adapter / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "r": 8, "bias": "none", "target_modules": ["q_proj"]})
        )
        script = Script([], default=completion("{}"))
        with scripted_server(script) as url:
            script.default = None  # load_lora_adapter gets the script's 500 (vLLM refuses with 4xx/5xx)
            refusing = LLMClient(url, "k", role="student", max_retries=0)
            with pytest.raises(LLMRejected, match="refused adapter 'severity-v1'"):
                asyncio.run(registry.register(session, refusing, Task.SEVERITY, adapter, "b", 16))
        assert registry.versions(session) == []


# --- the run's record -----------------------------------------------------------------------------


def test_a_round_is_recorded_in_the_format_the_report_reads() -> None:
    summary = {"score": 0.75, "size": 4, "failed": 0, "by_label": {"major": [3, 4]}}
    record = RoundRecord(
        number=2, model="severity-v2", exam_size=24, exam_malformed=1, exam_duplicates=2, exam_score=0.5,
        teacher_score=6, feedback="Confuses minor and trivial.", new_examples=90, new_dropped=6,
        curriculum=140, heldout=0.75, detail=summary,
        train=TrainStats(tokens=5000, tokens_per_s=1234.56, peak_memory_mb=2048.04, loss=0.25),
        teacher_tokens=90_000,
        timings={"exam": 1.234, "take": 2.0, "evaluate": 3.0, "finetune": 4.0, "heldout": 5.0},
    )  # fmt: skip
    assert record.to_json() == {
        "round": 2, "model": "severity-v2", "exam": {"size": 24, "malformed": 1, "duplicates": 2},
        "exam_score": 0.5, "teacher_score": 6, "feedback": "Confuses minor and trivial.",
        "new_examples": 90, "new_dropped": 6, "curriculum": 140, "heldout": 0.75, "detail": summary,
        "train": {"tokens": 5000, "tokens_per_s": 1234.6, "peak_memory_mb": 2048.0, "loss": 0.25},
        "teacher_tokens": 90_000,
        "timings": {"exam": 1.23, "take": 2.0, "evaluate": 3.0, "finetune": 4.0, "heldout": 5.0},
    }  # fmt: skip
    assert list(record.to_json()) == [  # the order runs were stored in before RoundRecord
        "round", "model", "exam", "exam_score", "teacher_score", "feedback", "new_examples", "new_dropped",
        "curriculum", "heldout", "detail", "train", "teacher_tokens", "timings",
    ]  # fmt: skip
    baseline = accuracy(attempts(["critical", "minor"]))
    assert round_zero("base", baseline) == {
        "round": 0, "model": "base", "heldout": 0.5, "detail": baseline.summary()
    }  # fmt: skip


# --- the cycle's failures -------------------------------------------------------------------------


def test_an_unreachable_teacher_fails_the_run_and_promotes_nothing(engine: sa.Engine, tmp_path: Path) -> None:
    heldout = tmp_path / "heldout.jsonl"
    data.write_jsonl(heldout, examples(8))
    script = Script([], default=completion('{"issue_type":"minor"}'))
    with scripted_server(script) as student_url:
        settings = load_settings(
            database_url=engine.url.render_as_string(hide_password=False),
            student_base_url=student_url,
            teacher_base_url=f"http://127.0.0.1:{free_port()}/v1",
            teacher_model="big",
            llm_max_retries=0,
            flywheel_dir=tmp_path / "fw",
        )
        with pytest.raises(LLMUnavailable, match="teacher model server"):
            run_flywheel(
                settings, engine, Plan.from_settings(settings, Task.SEVERITY, heldout_files=[heldout])
            )
    with Session(engine) as session:
        run = session.exec(select(FlywheelRun)).one()
        assert run.status == RunStatus.FAILED
        assert "teacher model server" in (run.error or "")
        assert run.rounds[0]["heldout"] == pytest.approx(2 / 8)  # round 0 was scored: 2 minor examples of 8
        assert registry.versions(session) == []


def test_a_run_without_held_out_examples_says_what_to_do(engine: sa.Engine, tmp_path: Path) -> None:
    settings = load_settings(
        database_url=engine.url.render_as_string(hide_password=False),
        teacher_model="t",
        teacher_base_url="http://127.0.0.1:1/v1",
        flywheel_dir=tmp_path,
    )
    with pytest.raises(DataError, match="--heldout"):
        run_flywheel(settings, engine, Plan.from_settings(settings, Task.SEVERITY))


def test_fine_tuning_settings_are_checked() -> None:
    from bot.config import ConfigError

    teacher = {"teacher_base_url": "http://127.0.0.1:1/v1", "teacher_model": "t"}
    with pytest.raises(ConfigError, match="REVIEWBOT_FINETUNE: unknown fine-tuning setting 'lr'"):
        Plan.from_settings(load_settings(finetune={"lr": 1}, **teacher), Task.SEVERITY)
    with pytest.raises(ConfigError, match="rank 32 is above REVIEWBOT_MAX_LORA_RANK 16"):
        Plan.from_settings(load_settings(finetune={"rank": 32}, max_lora_rank=16, **teacher), Task.SEVERITY)
    with pytest.raises(ConfigError, match="the teacher is not configured"):
        Plan.from_settings(load_settings(), Task.SEVERITY)


@pytest.mark.parametrize(
    ("scores", "stop"),
    [
        ([0.25, 0.6], False),
        ([0.25, 0.6, 0.605], False),  # one round without a gain above ε: patience 2 not yet spent
        ([0.25, 0.6, 0.605, 0.59], True),
        ([0.25, 0.6, 0.605, 0.7], False),
        ([0.5, 0.45, 0.5], True),  # never beat the model in use
    ],
)
def test_a_run_stops_when_the_held_out_score_stalls(scores: list[float], stop: bool) -> None:
    assert stalled(scores, epsilon=0.01, patience=2) is stop


def test_the_trainer_queue_starts_a_run_when_enough_feedback_arrived(
    engine: sa.Engine, tmp_path: Path
) -> None:
    from flywheel.jobs import TrainerQueue

    settings = load_settings(
        database_url=engine.url.render_as_string(hide_password=False),
        queue_url=f"sqlite:///{tmp_path / 'queue.db'}",
        teacher_base_url="http://127.0.0.1:1/v1",
        teacher_model="t",
        flywheel_min_new_feedback=2,
    )
    trainer = TrainerQueue(settings, engine)
    first = add_finding(engine)
    with session_scope(engine) as session:
        record_signal(session, first, SignalKind.REACTION, "+1", "ana", "a1")
    assert trainer.flywheel_when_due() == []
    second = add_finding(engine)
    with session_scope(engine) as session:
        session.get(Finding, second).review = "Another review."  # type: ignore[union-attr]
        record_signal(session, second, SignalKind.SEVERITY, "minor", "bo", "s1")
    assert trainer.flywheel_when_due() == ["severity"]
    assert trainer.huey.pending_count() == 1
    assert trainer.huey.name == "reviewbot-trainer"
    with Session(engine) as session:  # once a run has stored them, they are not new any more
        data.store(session, SEVERITY, data.feedback_examples(engine, SEVERITY), ExampleSource.FEEDBACK)
        session.add(FlywheelRun(task="severity", status=RunStatus.RUNNING))
        session.commit()
    assert trainer.flywheel_when_due() == []


def test_a_run_whose_process_died_is_abandoned(engine: sa.Engine) -> None:
    from datetime import UTC, datetime, timedelta

    from flywheel.jobs import STALE_RUN, abandon_stale_runs, running

    with Session(engine) as session:
        session.add(
            FlywheelRun(task="severity", started_at=datetime.now(UTC) - STALE_RUN - timedelta(minutes=1))
        )
        session.add(FlywheelRun(task="severity", started_at=datetime.now(UTC) - timedelta(hours=1)))
        session.commit()
    assert abandon_stale_runs(engine, STALE_RUN) == 1
    assert running(engine)  # the recent one may well be alive
    with Session(engine) as session:
        dead = session.exec(select(FlywheelRun).where(FlywheelRun.status == RunStatus.FAILED)).one()
    assert dead.error is not None
    assert dead.error.startswith("abandoned")


def test_a_launcher_runs_the_fine_tuning_in_another_process(
    engine: sa.Engine, tiny_student: TinyStudent, tmp_path: Path
) -> None:
    from flywheel.cycle import Flywheel

    settings = load_settings(
        database_url=engine.url.render_as_string(hide_password=False), flywheel_dir=tmp_path,
        student_weights=str(tiny_student.path), finetune_launcher="python",  # as `accelerate launch …` would
        finetune={"rank": 4, "alpha": 8, "epochs": 1, "batch_size": 4},
        teacher_base_url="http://127.0.0.1:1/v1", teacher_model="t",
    )  # fmt: skip
    flywheel = Flywheel(settings, engine, Plan.from_settings(settings, Task.SEVERITY))
    trained = flywheel._finetune(examples(8), tmp_path / "adapters" / "severity-v1", tmp_path / "round-1")
    assert trained.adapter_dir == (tmp_path / "adapters" / "severity-v1").resolve()
    assert (trained.adapter_dir / "adapter_model.safetensors").is_file()
    assert trained.train_tokens > 0
    assert (tmp_path / "round-1" / "finetune-job.json").is_file()


def test_confirmed_findings_teach_the_explanation_task(engine: sa.Engine) -> None:
    confirmed, corrected = add_finding(engine), add_finding(engine)
    with session_scope(engine) as session:
        for finding_id in (confirmed, corrected):
            session.get(Finding, finding_id).explanation = f"Explained {finding_id}."  # type: ignore[union-attr]
        record_signal(session, confirmed, SignalKind.REACTION, "+1", "ana", "a1")
        record_signal(session, corrected, SignalKind.SEVERITY, "minor", "bo", "c1")
    [example] = data.feedback_examples(engine, spec_for(Task.EXPLANATION))
    assert example.question["issue_type"] == "major"
    assert example.answer == {
        "explanation": f"Explained {confirmed}."
    }  # a corrected one argued a wrong severity
