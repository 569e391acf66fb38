"""Vetted teacher data: the teacher's examples are checked by asking it again, held to a share of
the curriculum, retired after a few runs and never shown back to it as real data; reviewers'
corrections weigh double; the exam asks for the reviewers' label mix, not one of each."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from bot.llm import LLMClient, LLMUnavailable
from bot.models import ExampleSource, ExampleSplit, FlywheelRun, Task, TrainingExample
from flywheel import data
from flywheel.curriculum import Mix, build_curriculum
from flywheel.cycle import Plan, run_flywheel
from flywheel.data import Example
from flywheel.evaluate import accuracy, grade_exam
from flywheel.exam import label_mix, write_exam
from flywheel.spec import spec_for
from flywheel.take import Attempt
from flywheel.vet import vet
from prompts import render
from tests.flywheel.test_flywheel import BASE, HELDOUT, Student
from tests.support.scripted_server import scripted_server
from tests.support.secrets import settings_with_key
from tests.support.severity_task import MARKERS, make_examples
from tests.support.teacher_server import MODEL, WRONG, Teacher, data_blocks, instructions, teacher_server
from tests.support.tiny_model import TinyStudent
from tests.support.vllm_server import free_port

SEVERITY = spec_for(Task.SEVERITY)


def client(url: str) -> LLMClient:
    return LLMClient(url, "key", role="teacher", max_retries=1, backoff_s=0.01)


def labelled(
    count: int, seed: int, tag: str, markers: list[str] | None = None, **meta: object
) -> list[Example]:
    """Examples of the synthetic task whose reviews end with a sentence of their own, long enough
    that none is a near-copy of the held-out ones (``flywheel.dedupe``) or of another set's."""
    return [
        data.parse_example(
            SEVERITY,
            {
                **e,
                "question": {
                    **e["question"],
                    "review": f"{e['question']['review']} Seen as {tag}, case {i}.",
                },
                "meta": meta,
            },
            "test",
        )
        for i, e in enumerate(make_examples(count, seed, markers))
    ]


def teachers(examples: list[Example], run_id: int) -> list[Example]:
    """As ``data.task_data`` reads the teacher's stored examples back."""
    return [
        Example(e.question, e.answer, 3, {"source": ExampleSource.TEACHER, "run_id": run_id})
        for e in examples
    ]


def reviewers(examples: list[Example], state: str = "confirmed") -> list[Example]:
    return [
        Example(e.question, e.answer, None, {"source": ExampleSource.FEEDBACK, "label_state": state})
        for e in examples
    ]


# --- self-consistency -----------------------------------------------------------------------------


def test_a_teacher_example_the_teacher_answers_differently_is_dropped() -> None:
    teacher = Teacher(mislabel=True)  # the grade's examples 0 and 2 carry a wrong label
    sitting = [Attempt(e, {"issue_type": "minor"}) for e in labelled(4, 1, "exam")]
    with teacher_server(teacher) as url:
        grade = asyncio.run(
            grade_exam(client(url), MODEL, SEVERITY, sitting, accuracy(sitting), data=[], count=4,
                       known=set(), rng=random.Random(0))
        )  # fmt: skip
        new = grade.new.examples
        vetted = asyncio.run(vet(client(url), MODEL, SEVERITY, new))
    assert (len(vetted.kept), len(vetted.disagreed), vetted.failed) == (2, 2, 0)
    assert vetted.disagreed == [new[0], new[2]]
    assert all(e.answer["issue_type"] == MARKERS[e.question["review"].split()[0]] for e in vetted.kept)
    assert {WRONG[MARKERS[e.question["review"].split()[0]]] for e in vetted.disagreed} == {
        e.answer["issue_type"] for e in vetted.disagreed
    }
    # Asked without the answer, in the student's own prompt, at temperature 0.
    asked = [p for p in teacher.prompts if instructions(p).startswith("Task: rate")]
    assert sorted(asked) == sorted(render("rate", **e.question) for e in new)
    assert teacher.temperatures["rate"] == [0.0] * 4
    assert vetted.teacher_tokens > 0


def test_a_failed_second_answer_drops_the_example_and_an_unreachable_teacher_is_raised() -> None:
    teacher = Teacher(faults=["invalid_json"])  # one of the four calls gets no valid answer
    examples = labelled(4, 2, "vet")
    with teacher_server(teacher) as url:
        vetted = asyncio.run(vet(client(url), MODEL, SEVERITY, examples))
    assert (len(vetted.kept), vetted.failed, vetted.dropped) == (3, 1, 1)
    with pytest.raises(LLMUnavailable, match="teacher model server"):
        asyncio.run(vet(client(f"http://127.0.0.1:{free_port()}/v1"), MODEL, SEVERITY, examples))


def test_explanation_examples_are_not_asked_again() -> None:
    question = {"code": "1 +x = 1", "review": "Leaks the handle.", "issue_type": "major"}
    examples = [Example(question, {"explanation": "The handle stays open on every error."})]
    unreachable = client(f"http://127.0.0.1:{free_port()}/v1")
    vetted = asyncio.run(vet(unreachable, MODEL, spec_for(Task.EXPLANATION), examples))
    assert (vetted.kept, vetted.dropped, vetted.teacher_tokens) == (examples, 0, 0)


# --- the curriculum's mix -------------------------------------------------------------------------


def test_the_teachers_share_is_capped_keeping_the_newest() -> None:
    real = reviewers(labelled(4, 3, "reviewed"))
    older, newer = teachers(labelled(4, 4, "older"), 1), labelled(4, 5, "newer")
    for share, kept in ((0.5, newer), (0.2, newer[-1:]), (1.0, [*older, *newer])):
        curriculum = build_curriculum([*real, *older], newer, set(), mix=Mix(max_synthetic_share=share))
        synthetic = [e for e in curriculum.examples if data.is_synthetic(e)]
        assert [e.key for e in synthetic] == [e.key for e in kept], share
        assert curriculum.capped == 8 - len(kept)
        assert len(synthetic) / len(curriculum.examples) <= share
        assert [e for e in curriculum.examples if not data.is_synthetic(e)] == real  # never capped


def test_reviewers_corrections_are_upsampled() -> None:
    corrected, confirmed = reviewers(labelled(2, 6, "fixed"), "corrected"), reviewers(labelled(2, 7, "kept"))
    seed = [
        Example(e.question, e.answer, None, {"source": ExampleSource.SEED}) for e in labelled(1, 8, "seed")
    ]
    # A teacher's example cannot pass for a correction by the meta it writes itself.
    sly = [Example(e.question, e.answer, 2, {"source": "feedback", "label_state": "corrected"})
           for e in labelled(1, 9, "sly")]  # fmt: skip
    curriculum = build_curriculum([*corrected, *confirmed, *seed], sly, set(), mix=Mix(correction_weight=3))
    counts = {e.key: curriculum.examples.count(e) for e in curriculum.examples}
    assert [counts[e.key] for e in corrected] == [3, 3]
    assert [counts[e.key] for e in [*confirmed, *seed]] == [1, 1, 1]
    assert sum(e.key == sly[0].key for e in curriculum.examples) == 1
    assert (curriculum.upsampled, curriculum.synthetic) == (4, 1)


def test_old_teacher_examples_retire_but_stay_stored(engine: sa.Engine) -> None:
    with Session(engine) as session:
        runs = [FlywheelRun(task="severity") for _ in range(5)]
        session.add_all(runs)
        session.commit()
        ids = [r.id for r in runs]
        data.store(
            session, SEVERITY, labelled(3, 10, "real"), ExampleSource.FEEDBACK, split=ExampleSplit.TRAIN
        )
        for n, run_id in enumerate(ids[:4]):  # the fifth run wrote none: it does not push one out
            data.store(session, SEVERITY, labelled(2, 11 + n, f"run {run_id}"), ExampleSource.TEACHER,
                       run_id=run_id, round_number=1)  # fmt: skip
        live = data.synthetic_runs(session, SEVERITY, 3)
        known = data.task_data(session, SEVERITY)
    assert live == set(ids[1:4])
    curriculum = build_curriculum(known.train, [], set(), mix=Mix(live_runs=live))
    assert curriculum.retired == 2
    assert {e.meta["run_id"] for e in curriculum.examples if data.is_synthetic(e)} == set(ids[1:4])
    assert len(curriculum.examples) == 3 + 6
    with Session(engine) as session:  # kept in the table
        assert len(session.exec(select(TrainingExample)).all()) == 3 + 8


# --- what the teacher is shown and asked ----------------------------------------------------------


def test_the_exam_asks_for_the_reviewers_label_mix_not_one_of_each() -> None:
    real = labelled(8, 12, "mix", markers=["Obscures", "Repeats", "Nests", "Leaks"])  # 6 minor, 2 major
    assert label_mix(SEVERITY, real) == "minor 75%, major 25%"
    teacher = Teacher()
    with teacher_server(teacher) as url:
        asyncio.run(
            write_exam(client(url), MODEL, SEVERITY, count=4, data=real, complaints=[], proficiency="new",
                       feedback=None, known=set(), rng=random.Random(0))
        )  # fmt: skip
    asked = instructions(teacher.prompts[0])
    assert "minor 75%, major 25%" in asked
    assert "Cover every possible answer" not in asked
    assert "not one of each" in asked


# --- a whole run ----------------------------------------------------------------------------------


def test_a_run_vets_caps_retires_and_shows_the_teacher_reviewers_data_only(
    engine: sa.Engine, tiny_student: TinyStudent, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real = labelled(8, 20, "reviewed", markers=["Obscures", "Repeats", "Nests", "Leaks"])
    corrected = real[:2]
    with Session(engine) as session:
        data.store(session, SEVERITY, HELDOUT, ExampleSource.FEEDBACK, split=ExampleSplit.HELDOUT)
        corrections = [Example(e.question, e.answer, None, {"label_state": "corrected"}) for e in corrected]
        data.store(session, SEVERITY, corrections, ExampleSource.FEEDBACK, split=ExampleSplit.TRAIN)
        data.store(session, SEVERITY, real[2:], ExampleSource.FEEDBACK, split=ExampleSplit.TRAIN)
        earlier = [FlywheelRun(task="severity") for _ in range(3)]
        session.add_all(earlier)
        session.commit()
        old = {}
        for n, run in enumerate(earlier):
            assert run.id is not None
            old[run.id] = labelled(2, 30 + n, f"taught in run {run.id}")
            data.store(session, SEVERITY, old[run.id], ExampleSource.TEACHER, run_id=run.id, round_number=1)
    teacher = Teacher(mislabel=True)  # the grade's new examples 0 and 2 carry a wrong label
    with scripted_server(Student([])) as student_url, teacher_server(teacher) as teacher_url:
        settings = settings_with_key(
            database_url=engine.url.render_as_string(hide_password=False),
            student_base_url=student_url, student_model=BASE, student_weights=str(tiny_student.path),
            teacher_base_url=teacher_url, teacher_model=MODEL, flywheel_dir=tmp_path / "fw",
            finetune={"rank": 4, "alpha": 8, "epochs": 1, "batch_size": 4},
            flywheel_exam_size=4, flywheel_new_examples=4, flywheel_max_rounds=1, promotion_min_items=1,
            flywheel_max_synthetic_share=0.3, flywheel_synthetic_runs=3, flywheel_correction_weight=2,
        )  # fmt: skip
        with caplog.at_level(logging.INFO, logger="flywheel.cycle"):
            run = run_flywheel(settings, engine, Plan.from_settings(settings, Task.SEVERITY))
    first = run.rounds[1]
    assert (first["new_examples"], first["vetted_dropped"], first["vetting_failed"]) == (4, 2, 0)
    assert "the teacher answered 2 differently when asked again" in caplog.text
    mix = first["curriculum_mix"]
    oldest = min(old)
    assert (mix["retired"], mix["upsampled"]) == (2, 2)  # the oldest run's two; two corrections doubled
    assert mix["synthetic"] <= int(10 * 0.3 / 0.7)  # 8 reviewers' examples, 2 of them twice
    assert mix["synthetic"] / mix["size"] <= 0.3
    assert mix["synthetic"] == 4 or mix["capped"] == 0  # the cap binds at its room, or nothing was left out
    trained = data.read_jsonl(
        tmp_path / "fw" / "runs" / str(run.id) / "round-1" / "curriculum.jsonl", SEVERITY
    )
    keys = [e.key for e in trained]
    assert not {e.key for e in old[oldest]} & set(keys)
    assert all(e.answer["issue_type"] == MARKERS[e.question["review"].split()[0]] for e in trained)
    assert [keys.count(e.key) for e in real] == [2, 2, 1, 1, 1, 1, 1, 1]
    with Session(engine) as session:  # the dropped ones were never stored for training
        stored = session.exec(select(TrainingExample).where(TrainingExample.run_id == run.id)).all()
    assert len(stored) == 2
    # The exam and the grade showed reviewers' examples only, and asked for their label mix.
    teacher_reviews = {e.question["review"] for examples in old.values() for e in examples}
    for kind in ("Write an exam", "Grade the exam"):
        [prompt] = [p for p in teacher.prompts if kind in instructions(p)]
        shown = [json.loads(line) for line in data_blocks(prompt)["data: task examples"].splitlines()]
        assert shown
        assert {s["question"]["review"] for s in shown} <= {e.question["review"] for e in real}
        assert not {s["question"]["review"] for s in shown} & teacher_reviews
        assert "minor 75%, major 25%" in instructions(prompt)
