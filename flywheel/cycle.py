"""The flywheel loop: exam → take → evaluate → curriculum → fine-tune → held-out evaluation, round
after round, until the dev score stops improving by ε for k rounds or a budget (rounds, wall time,
teacher tokens) is spent. The held-out set is split by example key (``gate.split_heldout``): its dev
part scores round 0 and every round, and so chooses the best round and stops the run; its test part
is answered once, at the end, by the best adapter and the model in use, and the ``gate`` decides on
those paired answers (a lower confidence bound of the gain above the margin, enough items, no
critical/major recall drop, no regression beyond the margin on the admin's golden set). Every round
is recorded on the run as it ends. A run without a golden set trains and registers its adapters but
promotes none: reviewers' labels fill the held-out split, so that gate alone is one reviewers could move.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlmodel import Session

from bot.config import ConfigError, Settings
from bot.llm import LLMClient, LLMError, check_teacher, judge_model
from bot.models import ExampleSource, ExampleSplit, FlywheelRun, ModelStatus, ModelVersion, RunStatus, Task
from bot.serving import SERVED, load_adapters, load_missing_adapters, served_models
from flywheel import data, gate, golden, registry
from flywheel.anchor import keep_anchor, read_anchor
from flywheel.budget import BudgetedTeacher, BudgetSpent
from flywheel.curriculum import Curriculum, Mix, build_curriculum
from flywheel.data import Example
from flywheel.evaluate import Grade, Judge, Score, accuracy, against_model, grade_exam, score_exam
from flywheel.exam import Exam, write_exam
from flywheel.finetune import Chat, FinetuneConfig, FinetuneResult, finetune, read_result, write_job
from flywheel.metrics import Costs, cost_matrix
from flywheel.spec import TaskSpec, spec_for
from flywheel.take import Attempt, take_exam
from flywheel.vet import Vetted, vet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """One run's settings: the configuration, with the command line's overrides."""

    task: Task
    max_rounds: int
    max_minutes: float | None
    max_teacher_tokens: int | None
    exam_size: int
    new_examples: int
    epsilon: float
    patience: int
    rule: gate.Rule
    costs: Costs  # severity's cost matrix
    heldout_share: float
    finetune: FinetuneConfig
    seed_files: tuple[Path, ...] = ()
    heldout_files: tuple[Path, ...] = ()
    max_synthetic_share: float = 1.0  # of the curriculum, for the teacher's examples
    synthetic_runs: int = 3  # the latest runs whose teacher examples are trained on
    correction_weight: int = 1  # rows per reviewer's correction

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        task: Task,
        *,
        rounds: int | None = None,
        seed_files: Sequence[Path] = (),
        heldout_files: Sequence[Path] = (),
    ) -> Plan:
        try:
            tuning = FinetuneConfig.from_overrides(settings.finetune)
        except ValueError as exc:
            raise ConfigError(f"REVIEWBOT_FINETUNE: {exc}") from None
        check_teacher(settings)  # before a run is recorded
        missing = [m for m in ("torch", "peft", "trl") if importlib.util.find_spec(m) is None]
        if missing and not settings.finetune_launcher:
            raise ConfigError(
                f"fine-tuning needs {', '.join(missing)}: install the trainer's extra, "
                "pip install 'reviewbot[train]' (or set REVIEWBOT_FINETUNE_LAUNCHER to a Python that has it)"
            )
        try:
            costs = cost_matrix(settings.severity_costs)
        except ValueError as exc:
            raise ConfigError(f"REVIEWBOT_SEVERITY_COSTS: {exc}") from None
        if tuning.rank > settings.max_lora_rank:
            raise ConfigError(
                f"REVIEWBOT_FINETUNE: rank {tuning.rank} is above REVIEWBOT_MAX_LORA_RANK "
                f"{settings.max_lora_rank}; vLLM would refuse the adapter"
            )
        return cls(
            task=task,
            max_rounds=rounds or settings.flywheel_max_rounds,
            max_minutes=settings.flywheel_max_minutes,
            max_teacher_tokens=settings.flywheel_max_teacher_tokens,
            exam_size=settings.flywheel_exam_size,
            new_examples=settings.flywheel_new_examples,
            epsilon=settings.flywheel_epsilon,
            patience=settings.flywheel_patience,
            rule=gate.Rule.from_settings(settings),
            costs=costs,
            heldout_share=settings.flywheel_heldout_share,
            finetune=tuning,
            seed_files=tuple(seed_files),
            heldout_files=tuple(heldout_files),
            max_synthetic_share=settings.flywheel_max_synthetic_share,
            synthetic_runs=settings.flywheel_synthetic_runs,
            correction_weight=settings.flywheel_correction_weight,
        )


def stalled(scores: Sequence[float], epsilon: float, patience: int) -> bool:
    """True when each of the last ``patience`` held-out scores (round 0 first) failed to beat the
    best before it by more than ``epsilon``."""
    stale, best = 0, scores[0]
    for score_ in scores[1:]:
        stale = 0 if score_ > best + epsilon else stale + 1
        best = max(best, score_)
    return stale >= patience


class Reporter:
    """What a person watching sees: one line per step, a bar while the student answers."""

    def __init__(self, console: Console | None) -> None:
        self.console = console

    def say(self, message: str) -> None:
        if self.console is None:  # a queue worker: the log is where people look
            log.info(message)
        else:
            self.console.print(message, highlight=False)

    def bar(self, label: str, total: int) -> tuple[Progress | None, Callable[[], None] | None]:
        if self.console is None:
            return None, None
        progress = Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.console
        )
        task_id = progress.add_task(label, total=total)
        progress.start()
        return progress, lambda: progress.advance(task_id)


@contextmanager
def timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the block's wall time, in seconds, as ``timings[step]``."""
    clock = time.monotonic()
    yield
    timings[step] = time.monotonic() - clock


def round_zero(
    model: str, score: Score, gold: Score | None = None, golden_version: int | None = None, test_size: int = 0
) -> dict[str, Any]:
    """The run's first entry: the model in use when it began, on the dev part of the held-out set
    (``heldout``) and on the golden set; the sizes of the dev and test parts."""
    return {
        "round": 0, "model": model, "heldout": score.value, "detail": score.summary(),
        "golden": gold.value if gold else None, "golden_version": golden_version,
        **severity_figures(score, gold), "split": {"dev": len(score.verdicts), "test": test_size},
    }  # fmt: skip


def severity_figures(held: Score, gold: Score | None) -> dict[str, Any]:
    """The harm-weighted metrics (``metrics``) of a dev and a golden score, when the task has them."""
    return {
        "heldout_metrics": held.severity.to_json() if held.severity else None,
        "golden_metrics": gold.severity.to_json() if gold and gold.severity else None,
    }


@dataclass(frozen=True)
class TrainStats:
    tokens: int  # processed over all epochs, padding excluded
    tokens_per_s: float
    peak_memory_mb: float
    loss: float | None  # the last one logged
    too_long: int = 0  # examples left out for being longer than the sequence length

    @classmethod
    def of(cls, result: FinetuneResult) -> TrainStats:
        loss = result.losses[-1][1] if result.losses else None
        return cls(result.train_tokens, result.tokens_per_s, result.peak_memory_mb, loss, result.too_long)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "peak_memory_mb": round(self.peak_memory_mb, 1),
            "loss": self.loss,
            "too_long": self.too_long,
        }


@dataclass(frozen=True)
class RoundRecord:
    """What one round did and measured; ``to_json()`` is its entry in ``FlywheelRun.rounds``, which
    ``reviewbot flywheel report`` and its plot read."""

    number: int
    model: str  # the adapter the round trained
    exam_size: int
    exam_malformed: int
    exam_duplicates: int
    exam_score: float
    teacher_score: int  # the teacher's grade of the exam, 1-10
    feedback: str  # the teacher's, on the student's weaknesses
    new_examples: int  # the teacher's, stored for training
    new_dropped: int  # the teacher's new examples dropped: malformed or already known
    curriculum: int  # examples trained on
    heldout: float
    detail: dict[str, Any]  # Score.summary() of the held-out score
    train: TrainStats
    teacher_tokens: int  # spent by the run so far
    timings: dict[str, float]  # seconds per step
    golden: float | None = None  # the adapter's score on the golden set, when the run has one
    golden_version: int | None = None  # that golden set's version
    figures: dict[str, Any] = field(default_factory=dict)  # severity_figures() of the round's scores
    vetted_dropped: int = 0  # new examples the teacher answered differently when asked again
    vetting_failed: int = 0  # new examples dropped because that second answer failed
    mix: dict[str, int] = field(default_factory=dict)  # Curriculum.to_json(): the teacher's share
    anchor: float | None = None  # the adapter's score on the anchor exam: comparable across rounds and runs

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.number,
            "model": self.model,
            "exam": {
                "size": self.exam_size,
                "malformed": self.exam_malformed,
                "duplicates": self.exam_duplicates,
            },
            "exam_score": self.exam_score,
            "teacher_score": self.teacher_score,
            "feedback": self.feedback,
            "new_examples": self.new_examples,
            "new_dropped": self.new_dropped,
            "curriculum": self.curriculum,
            "heldout": self.heldout,
            "detail": self.detail,
            "train": self.train.to_json(),
            "teacher_tokens": self.teacher_tokens,
            "timings": {step: round(seconds, 2) for step, seconds in self.timings.items()},
            "golden": self.golden,
            "golden_version": self.golden_version,
            **self.figures,
            "vetted_dropped": self.vetted_dropped,
            "vetting_failed": self.vetting_failed,
            "curriculum_mix": self.mix,
            "anchor": self.anchor,
        }


class Flywheel:
    """One run of one task; ``run()`` drives it and records everything on its ``FlywheelRun`` row."""

    def __init__(
        self, settings: Settings, engine: sa.Engine, plan: Plan, console: Console | None = None
    ) -> None:
        self.settings, self.engine, self.plan = settings, engine, plan
        self.spec: TaskSpec = spec_for(plan.task)
        self.report = Reporter(console)
        self.teacher_tokens = 0
        self.tuning = plan.finetune  # with the served sequence length once the run knows it
        self.baseline_model = ""  # the model in use when the run began: set by round 0
        self.golden: golden.Golden | None = None  # the newest golden set when the run began
        self.anchor: list[Example] = []  # the task's anchor exam: set when the run begins
        self.golden_baseline: Score | None = None  # the model in use on it: set by round 0
        self.judges: list[Example] = []  # dev, test and golden items: their near-copies are never trained on
        self.teacher_model = settings.teacher_model or ""
        self.judge: Judge | None = None  # of explanations: set when the run opens its clients
        self.in_use_answers: dict[tuple[str, ...], list[Attempt]] = {}  # the model in use's, per item set
        self.base_weights = settings.student_weights or settings.student_model
        self.adapters_dir = settings.flywheel_dir / "adapters"
        with Session(engine) as session:
            run = FlywheelRun(task=plan.task.value)
            session.add(run)
            session.commit()
            session.refresh(run)
        assert run.id is not None
        self.run_id = run.id
        self.rng = random.Random(run.id)  # another sample of the task data for the teacher each run
        self.run_dir = settings.flywheel_dir / "runs" / str(run.id)

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> FlywheelRun:
        """Run to the end; a failure marks the run failed with its reason (and promotes nothing)."""
        try:
            teacher = BudgetedTeacher.for_run(self.settings, self.plan.max_teacher_tokens)
            outcome = asyncio.run(self._run(teacher))
        except BaseException as exc:  # an interrupt too: a run must not stay "running" forever
            reason = str(exc) or type(exc).__name__
            self._finish(RunStatus.FAILED, error=f"{type(exc).__name__}: {reason}")
            raise  # the CLI prints it, a queue worker logs it
        return self._finish(RunStatus.DONE, outcome=outcome)

    async def _run(self, teacher: LLMClient) -> str:
        started = time.monotonic()
        # ``student`` evaluates (REVIEWBOT_EVAL_BASE_URL's vLLM when set); ``production`` serves reviews.
        async with (
            teacher,
            LLMClient.evaluation(self.settings) as student,
            LLMClient.student(self.settings) as production,
            LLMClient.judge(self.settings) as judge,
        ):
            self.judge = Judge(judge, judge_model(self.settings))
            heldout, test = self._prepare_data()
            self.golden = self._golden_set()
            self.anchor = read_anchor(self.settings.flywheel_dir, self.spec)
            self.judges = [*heldout, *test, *(self.golden.examples if self.golden else [])]
            await load_missing_adapters(self.engine, student)
            self.baseline_model = served_models(self.settings, self.engine)[self.plan.task]
            # Trained at the length it is served at: the context vLLM says it serves the model with.
            self.tuning = self.plan.finetune.for_serving(await production.max_model_len(self.baseline_model))
            baseline = await self._heldout_score(student, self.baseline_model, heldout)
            self.golden_baseline = await self._golden_score(student, self.baseline_model)
            version = self.golden.version if self.golden else None
            zero = round_zero(self.baseline_model, baseline, self.golden_baseline, version, len(test))
            anchor = await self._anchor_score(student, self.baseline_model) if self.anchor else None
            self._record({**zero, "anchor": anchor})
            self.report.say(
                f"round 0: {self.baseline_model} scores {baseline.value:.3f} "
                f"on {len(heldout)} dev examples{self._on_golden(self.golden_baseline)}"
            )
            scores, last, best = [baseline.value], None, None
            stopped = ""  # why the rounds ended early, when the teacher budget ended them
            for number in range(1, self.plan.max_rounds + 1):
                stop = self._budget_spent(started, number)
                if stop:
                    self.report.say(f"stopping before round {number}: {stop}")
                    break
                try:
                    last = await self._round(number, student, teacher, last, baseline, heldout)
                except BudgetSpent as exc:
                    stopped = f"stopped in round {number}: {exc}"
                    self.report.say(stopped)
                    break
                if best is None or last.heldout > best.heldout:
                    best = last
                scores.append(last.heldout)
                if stalled(scores, self.plan.epsilon, self.plan.patience):
                    self.report.say(
                        f"stopping: no held-out gain above {self.plan.epsilon:g} "
                        f"in {self.plan.patience} rounds"
                    )
                    break
            try:
                outcome = await self._promote_best(student, best, test, production)
            except BudgetSpent as exc:  # the test part could not be scored: nothing is promoted
                outcome = f"{self.baseline_model} stays: {exc}"
                self.report.say(outcome)
            await self._unload_rejected(student)
            return f"{outcome} ({stopped})" if stopped else outcome

    async def _round(
        self,
        number: int,
        student: LLMClient,
        teacher: LLMClient,
        last: RoundRecord | None,
        baseline: Score,
        heldout: list[Example],
    ) -> RoundRecord:
        """One round, each step timed; recorded on the run when it ends. ``last`` is the round before
        (None in the first), whose adapter takes this round's exam."""
        timings: dict[str, float] = {}
        round_dir = self.run_dir / f"round-{number}"
        with Session(self.engine) as session:
            known = data.task_data(session, self.spec)
        # A golden item (the admin's, or an audited finding labelled by reviewers before it was drawn)
        # is never shown to the teacher nor trained on.
        known = replace(known, train=[e for e in known.train if e.key not in self._golden_keys])
        shown = known.reviewers  # the teacher sees reviewers' data only, never its own earlier examples
        with timed(timings, "exam"):
            exam = await self._write_exam(number, teacher, known, shown, last, baseline, round_dir)
        if not self.anchor:  # the task's first exam: the anchor of its trend from now on
            self.anchor = keep_anchor(self.settings.flywheel_dir, self.spec, exam.items.examples)
        with timed(timings, "take"):
            model = last.model if last else self.baseline_model
            attempts, exam_score = await self._take(number, student, teacher, model, exam)
        with timed(timings, "evaluate"):
            grade = await self._grade(number, teacher, known, shown, attempts, exam_score)
        with timed(timings, "vet"):
            vetted = await self._vet(number, teacher, grade)
        curriculum = self._curriculum(number, known, vetted, heldout, round_dir)
        with timed(timings, "finetune"):
            name, trained = await self._train(number, curriculum.examples, round_dir)
        with timed(timings, "load"):
            version = await self._load(student, trained)
        with timed(timings, "heldout"):
            held, gold = await self._register(number, student, version, trained, heldout, baseline)
        with timed(timings, "anchor"):
            anchor = await self._anchor_score(student, name)
        record = RoundRecord(
            number=number, model=name,
            exam_size=len(exam.items.examples), exam_malformed=exam.items.malformed,
            exam_duplicates=exam.items.duplicates, exam_score=exam_score.value,
            teacher_score=grade.proficiency, feedback=grade.feedback,
            new_examples=len(grade.new.examples), new_dropped=grade.new.malformed + grade.new.duplicates,
            curriculum=len(curriculum.examples), heldout=held.value, detail=held.summary(),
            train=TrainStats.of(trained), teacher_tokens=self.teacher_tokens, timings=timings,
            golden=gold.value if gold else None, golden_version=self.golden.version if self.golden else None,
            figures=severity_figures(held, gold), vetted_dropped=len(vetted.disagreed),
            vetting_failed=vetted.failed, mix=curriculum.to_json(), anchor=anchor,
        )  # fmt: skip
        self._record(record.to_json())
        return record

    # --- a round's steps -------------------------------------------------------------------------

    async def _write_exam(
        self,
        number: int,
        teacher: LLMClient,
        known: data.TaskData,
        shown: list[Example],
        last: RoundRecord | None,
        baseline: Score,
        round_dir: Path,
    ) -> Exam:
        """Step 1: the teacher's exam, aimed at the student's level and at its last grade's feedback."""
        if last is None:
            proficiency = f"{baseline.value:.0%} on the held-out examples"
        else:
            proficiency = (
                f"{last.teacher_score}/10 by your last grade, {last.exam_score:.0%} on its last exam"
            )
        exam = await write_exam(
            teacher, self.teacher_model, self.spec, count=self.plan.exam_size, data=shown,
            complaints=data.complaints(self.engine), proficiency=proficiency,
            feedback=last.feedback if last else None, known=known.keys | self._golden_keys, rng=self.rng,
            max_tokens=self.settings.teacher_max_tokens,
        )  # fmt: skip
        self.teacher_tokens += exam.teacher_tokens
        data.write_jsonl(round_dir / "exam.jsonl", exam.items.examples)
        self.report.say(
            f"round {number}: the teacher wrote {len(exam.items.examples)} questions "
            f"({exam.items.malformed} malformed, {exam.items.duplicates} duplicates dropped)"
        )
        return exam

    async def _take(
        self, number: int, student: LLMClient, teacher: LLMClient, model: str, exam: Exam
    ) -> tuple[list[Attempt], Score]:
        """Step 2: ``model`` answers the exam, and its answers are scored (explanations: against
        the exam's answers, or those of the reference model on the teacher's server)."""
        attempts = await self._answer(
            student, model, exam.items.examples, f"round {number}: {model} takes the exam"
        )
        reference = self.settings.reference_model
        result = await score_exam(
            self.spec, attempts, self.judge, Judge(teacher, reference) if reference else None
        )
        self.teacher_tokens += result.teacher_tokens
        return attempts, result

    async def _grade(
        self,
        number: int,
        teacher: LLMClient,
        known: data.TaskData,
        shown: list[Example],
        attempts: list[Attempt],
        exam_score: Score,
    ) -> Grade:
        """Step 3: the teacher's grade, feedback and new examples."""
        grade = await grade_exam(
            teacher, self.teacher_model, self.spec, attempts, exam_score, data=shown,
            count=self.plan.new_examples, known=known.keys | self._golden_keys, rng=self.rng,
            max_tokens=self.settings.teacher_max_tokens,
        )  # fmt: skip
        self.teacher_tokens += grade.teacher_tokens
        self.report.say(
            f"round {number}: exam score {exam_score.value:.0%}, teacher grade {grade.proficiency}/10, "
            f"{len(grade.new.examples)} new examples ({grade.new.malformed} malformed, "
            f"{grade.new.duplicates} duplicates dropped). Feedback: {grade.feedback}"
        )
        return grade

    async def _vet(self, number: int, teacher: LLMClient, grade: Grade) -> Vetted:
        """Step 3b: the teacher's new examples it answers again the same way (``flywheel.vet``)."""
        vetted = await vet(teacher, self.teacher_model, self.spec, grade.new.examples)
        self.teacher_tokens += vetted.teacher_tokens
        if self.spec.classification:
            self.report.say(
                f"round {number}: {len(vetted.kept)} of {len(grade.new.examples)} new examples kept; the "
                f"teacher answered {len(vetted.disagreed)} differently when asked again"
                + (f", and {vetted.failed} not at all" if vetted.failed else "")
            )
        return vetted

    def _curriculum(
        self, number: int, known: data.TaskData, vetted: Vetted, heldout: list[Example], round_dir: Path
    ) -> Curriculum:
        """Step 4: store the teacher's vetted new examples; the curriculum of reviewers' examples
        and the teacher's (``flywheel.curriculum``)."""
        with Session(self.engine) as session:
            data.store(
                session, self.spec, vetted.kept, ExampleSource.TEACHER,
                run_id=self.run_id, round_number=number,
            )  # fmt: skip
            live = data.synthetic_runs(session, self.spec, self.plan.synthetic_runs)
        mix = Mix(self.plan.max_synthetic_share, self.plan.correction_weight, live)
        excluded = {e.key for e in heldout} | self._golden_keys  # never trained on what judges it
        curriculum = build_curriculum(known.train, vetted.kept, excluded, self.judges, mix)
        data.write_jsonl(round_dir / "curriculum.jsonl", curriculum.examples)
        self.report.say(
            f"round {number}: curriculum of {len(curriculum.examples)} examples, {curriculum.synthetic} "
            f"the teacher's ({curriculum.retired} of older runs retired, {curriculum.capped} beyond the "
            f"{self.plan.max_synthetic_share:.0%} share left out), {curriculum.upsampled} extra copies "
            "of reviewers' corrections"
        )
        return curriculum

    async def _train(
        self, number: int, curriculum: list[Example], round_dir: Path
    ) -> tuple[str, FinetuneResult]:
        """Step 5: a new adapter, under a name never used before, fine-tuned on the curriculum."""
        with Session(self.engine) as session:
            name = registry.next_adapter_name(session, self.plan.task, self.adapters_dir)
        self.report.say(f"round {number}: fine-tuning {name} on {len(curriculum)} examples")
        trained = await asyncio.to_thread(self._finetune, curriculum, self.adapters_dir / name, round_dir)
        if trained.too_long:
            self.report.say(
                f"round {number}: {trained.too_long} of {len(curriculum)} examples left out of {name}: "
                f"longer than {trained.training['config']['max_seq_length']} tokens, the sequence length"
            )
        return name, trained

    async def _load(self, student: LLMClient, trained: FinetuneResult) -> ModelVersion:
        """Step 6: register the adapter as a candidate version and load it into vLLM."""
        with Session(self.engine) as session:
            return await registry.register(
                session, student, self.plan.task, trained.adapter_dir, self.base_weights,
                self.settings.max_lora_rank,
            )  # fmt: skip

    async def _register(
        self,
        number: int,
        student: LLMClient,
        version: ModelVersion,
        trained: FinetuneResult,
        heldout: list[Example],
        baseline: Score,
    ) -> tuple[Score, Score | None]:
        """Step 7: score the candidate ``version`` on the held-out and golden sets; it keeps its
        scores for the promotion gates."""
        name = version.adapter_name
        held = await self._heldout_score(student, name, heldout)
        gold = await self._golden_score(student, name)
        metrics = {
            "heldout": held.value, "heldout_size": len(heldout),
            "baseline": baseline.value, "baseline_model": self.baseline_model,
            "run_id": self.run_id, "round": number, "train_loss": TrainStats.of(trained).loss,
            **self._golden_metrics(gold), **severity_figures(held, gold),
        }  # fmt: skip
        with Session(self.engine) as session:
            row = session.merge(version)
            row.metrics = {**row.metrics, **metrics}  # beside what registration recorded
            row.training = trained.training
            session.add(row)
            session.commit()
        self.report.say(
            f"round {number}: {name} scores {held.value:.3f} on the held-out examples{self._on_golden(gold)}"
        )
        return held, gold

    # --- helpers ---------------------------------------------------------------------------------

    def _prepare_data(self) -> tuple[list[Example], list[Example]]:
        """Store reviewers' feedback and the given files as examples; return the held-out set's
        dev and test parts."""
        with Session(self.engine) as session:
            added = data.store(
                session, self.spec, data.feedback_examples(self.engine, self.spec), ExampleSource.FEEDBACK,
                heldout_share=self.plan.heldout_share,
            )  # fmt: skip
            for path in self.plan.seed_files:
                added += data.store(
                    session, self.spec, data.read_jsonl(path, self.spec), ExampleSource.SEED,
                    heldout_share=self.plan.heldout_share,
                )  # fmt: skip
            for path in self.plan.heldout_files:
                added += data.store(
                    session,
                    self.spec,
                    data.read_jsonl(path, self.spec),
                    ExampleSource.SEED,
                    split=ExampleSplit.HELDOUT,
                )
            known = data.task_data(session, self.spec)
        if not known.heldout:
            raise data.DataError(
                f"no held-out {self.spec.task} examples to judge a new adapter by: collect reviewers' "
                "feedback, or give a file with --heldout (or --seed, of which a share is held out)"
            )
        if not known.reviewers and self.plan.max_synthetic_share < 1:
            raise data.DataError(
                f"no {self.spec.task} training examples from reviewers or seed files, and the teacher's may "
                f"be at most {self.plan.max_synthetic_share:.0%} of the curriculum "
                "(REVIEWBOT_FLYWHEEL_MAX_SYNTHETIC_SHARE): collect feedback or give --seed, "
                "or set the share to 1 to train on the teacher's examples alone"
            )
        dev, test = gate.split_heldout(known.heldout)
        if not dev or not test:
            raise data.DataError(
                f"{len(known.heldout)} held-out {self.spec.task} examples cannot be split into a dev part "
                "to choose a round by and a test part to promote by: give more (--heldout or --seed)"
            )
        data.write_jsonl(self.run_dir / "heldout.jsonl", known.heldout)
        data.write_jsonl(self.run_dir / registry.TEST_FILE, test)
        self.report.say(
            f"data: {added} new examples stored; {len(known.train)} for training, "
            f"{len(known.heldout)} held out ({len(dev)} dev, {len(test)} test)"
        )
        return dev, test

    def _golden_set(self) -> golden.Golden | None:
        """Store the ``--heldout`` files, together, as the task's newest golden set (the same files
        again are the version they were); return the newest golden set, if the admin gave one."""
        task = self.plan.task
        with Session(self.engine) as session:
            if self.plan.heldout_files:
                given = [e for path in self.plan.heldout_files for e in data.read_jsonl(path, self.spec)]
                golden.add(session, task, given, ", ".join(map(str, self.plan.heldout_files)))
            newest = golden.newest(session, task)
        if newest is None:
            self.report.say(f"{golden.missing_message(task)}; this run will not promote")
        else:
            size = len(newest.examples)
            self.report.say(f"golden set v{newest.version}: {size} examples ({newest.source})")
        return newest

    @property
    def _golden_keys(self) -> set[str]:
        """The golden set's and the anchor exam's questions: never shown, asked nor trained on."""
        return (self.golden.keys if self.golden else set()) | {e.key for e in self.anchor}

    async def _anchor_score(self, student: LLMClient, model: str) -> float:
        return (await self._heldout_score(student, model, self.anchor, "anchor exam")).value

    async def _golden_score(self, student: LLMClient, model: str) -> Score | None:
        if self.golden is None:
            return None
        return await self._heldout_score(student, model, self.golden.examples, "golden set")

    def _golden_metrics(self, gold: Score | None) -> dict[str, Any]:
        """A candidate's golden score, for `models promote` to compare: with the set's version and
        the model in use's score on it."""
        if gold is None or self.golden is None or self.golden_baseline is None:
            return {}
        return {
            "golden": gold.value, "golden_version": self.golden.version,
            "golden_size": len(self.golden.examples), "golden_baseline": self.golden_baseline.value,
        }  # fmt: skip

    def _on_golden(self, gold: Score | None) -> str:
        if gold is None or self.golden is None:
            return ""
        return f" and {gold.value:.3f} on golden set v{self.golden.version}"

    async def _answer(
        self, student: LLMClient, model: str, questions: list[Example], label: str
    ) -> list[Attempt]:
        progress, advance = self.report.bar(label, len(questions))
        try:
            return (await take_exam(student, model, self.spec, questions, advance)).attempts
        finally:
            if progress is not None:
                progress.stop()

    async def _heldout_score(
        self,
        student: LLMClient,
        model: str,
        heldout: list[Example],
        label: str = "held-out examples",
    ) -> Score:
        """``model``'s score on the items: severity by the code; an explanation against the model in
        use's answer to the same item, judged pairwise (the model in use itself ties every pair)."""
        attempts = await self._answer(student, model, heldout, f"{label}: {model}")
        if self.spec.classification:
            return accuracy(attempts, self.plan.costs)
        keys = tuple(e.key for e in heldout)
        if model == self.baseline_model:
            self.in_use_answers[keys] = attempts
        elif keys not in self.in_use_answers:  # answered once per item set: at temperature 0, alike
            self.in_use_answers[keys] = await self._answer(
                student, self.baseline_model, heldout, f"{label}: {self.baseline_model}"
            )
        assert self.judge is not None  # set by _run
        result = await against_model(self.judge, attempts, self.in_use_answers[keys])
        self.teacher_tokens += result.teacher_tokens
        return result

    def _finetune(self, curriculum: list[Example], out_dir: Path, round_dir: Path) -> FinetuneResult:
        chats: list[Chat] = [
            (self.spec.conversation(e.question), self.spec.answer_text(e.answer)) for e in curriculum
        ]
        launcher = self.settings.finetune_launcher
        if not launcher:
            return finetune(
                self.base_weights,
                chats,
                out_dir,
                self.tuning,
                show_progress=self.report.console is not None,
            )
        # Another process (e.g. `accelerate launch` on several GPUs) runs the same code on a job file.
        job = write_job(round_dir / "finetune-job.json", self.base_weights, chats, out_dir, self.tuning)
        command = [*shlex.split(launcher), "-m", "flywheel.finetune", str(job)]
        if shlex.split(launcher)[0] == "python":
            command[0] = sys.executable
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0:
            raise RuntimeError(
                f"fine-tuning failed: `{shlex.join(command)}` exited with {completed.returncode}"
            )
        return read_result(out_dir)

    # --- bookkeeping -----------------------------------------------------------------------------

    def _budget_spent(self, started: float, number: int) -> str | None:
        if self.plan.max_teacher_tokens is not None and self.teacher_tokens >= self.plan.max_teacher_tokens:
            return f"teacher-token budget spent ({self.teacher_tokens} of {self.plan.max_teacher_tokens})"
        if self.plan.max_minutes is not None and number > 1:
            elapsed = time.monotonic() - started
            per_round = elapsed / (number - 1)
            if elapsed + per_round > self.plan.max_minutes * 60:
                return (
                    f"another round (about {per_round / 60:.1f} min) would pass "
                    f"the {self.plan.max_minutes:g}-minute budget"
                )
        return None

    def _record(self, entry: dict[str, Any]) -> None:
        with Session(self.engine) as session:
            run = session.get(FlywheelRun, self.run_id)
            assert run is not None
            run.rounds = [*run.rounds, entry]  # a new list, so SQLAlchemy sees the JSON change
            session.add(run)
            session.commit()

    def _finish(
        self, status: RunStatus, *, outcome: str | None = None, error: str | None = None
    ) -> FlywheelRun:
        with Session(self.engine) as session:
            run = session.get(FlywheelRun, self.run_id)
            assert run is not None
            run.status, run.outcome, run.error = status, outcome, error
            run.finished_at = datetime.now(UTC)
            session.add(run)
            session.commit()
            session.refresh(run)
            return run

    async def _promote_best(
        self,
        student: LLMClient,
        best: RoundRecord | None,
        test: list[Example],
        production: LLMClient,
    ) -> str:
        if best is None:
            outcome = f"no round ran; {self.baseline_model} stays"
        elif self.golden is None or self.golden_baseline is None or best.golden is None:
            outcome = (
                f"{self.baseline_model} stays, {best.model} is registered but not promoted: "
                f"{golden.missing_message(self.plan.task)}"
            )
        else:
            scores = [await self._heldout_score(student, m, test, "test examples")
                      for m in (best.model, self.baseline_model)]  # fmt: skip
            gold = gate.GoldenScores(self.golden.version, best.golden, self.golden_baseline.value)
            verdict = gate.judge(
                (best.model, scores[0]), (self.baseline_model, scores[1]), self.plan.rule, gold
            )
            if verdict.passed and self.settings.eval_base_url is not None:
                await self._load_into_production(production, best.model)
            outcome = self._promote(best.model, verdict)
        self.report.say(outcome)
        return outcome

    async def _load_into_production(self, production: LLMClient, name: str) -> None:
        """Load the winner, evaluated on the separate vLLM, into the one reviews use, checking that
        it serves the same base weights; a failure fails the run, with nothing promoted."""
        with Session(self.engine) as session:
            version = registry.find(session, name)
        await load_adapters(production, [version])

    async def _unload_rejected(self, student: LLMClient) -> None:
        """Unload the run's adapters that reviews do not use: each held one of vLLM's ``--max-loras``
        slots and its memory. A failure is logged, not fatal: the run's outcome stands."""
        with Session(self.engine) as session:
            rejected = [
                v.adapter_name for v in registry.versions(session, self.plan.task)
                if v.metrics.get("run_id") == self.run_id and v.status not in SERVED
            ]  # fmt: skip
        for name in rejected:
            try:
                await student.unload_lora_adapter(name)
            except LLMError as exc:
                log.warning("could not unload %s, a candidate not promoted: %s", name, exc)

    def _promote(self, name: str, verdict: gate.Verdict) -> str:
        """Record the test verdict on the candidate, and promote it if the verdict passed."""
        with Session(self.engine) as session:
            version = registry.find(session, name)
            version.metrics = {**version.metrics, "test": {**verdict.figures, "passed": verdict.passed}}
            session.add(version)
            session.commit()
            try:
                promoted = registry.promote(session, name, verdict, canary_share=self.settings.canary_share)
            except registry.PromotionRefused as exc:
                return f"{self.baseline_model} stays: {exc}"
        said = f"promoted {name}: {verdict.reason}"
        if promoted.status == ModelStatus.CANARY:  # the live check decides the rest (bot.feedback.canary)
            return f"{said}; first a canary on {promoted.canary_share:.0%} of merge requests"
        return said


def run_flywheel(
    settings: Settings, engine: sa.Engine, plan: Plan, console: Console | None = None
) -> FlywheelRun:
    return Flywheel(settings, engine, plan, console).run()
