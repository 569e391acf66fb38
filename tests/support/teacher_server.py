"""A test double of the hosted teacher: an OpenAI-compatible chat server that writes exams, grades
them and judges explanations from the labelled synthetic task in ``severity_task`` (it knows the
rule: a review's first word decides its severity). It reads the product's prompts the way a real
teacher should: its task from the instructions outside the fenced data blocks, the material (JSON
lines, the explanations to compare) from inside them, and it aims new examples at the markers the
student missed.

``faults`` makes the next calls misbehave, in order: ``"invalid_json"``, ``"wrong_labels"``,
``"empty"``, ``"duplicates"``, ``"no_feedback"``, ``"http_500"``. ``mislabel`` gives every other new
example of a grade a valid but wrong label, which the double itself does not give when asked the
question alone.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.support.live_server import live_server
from tests.support.severity_task import MARKERS, make_example, severity_of

MODEL = "teacher-test"
# A fenced data block of prompts.data_block: a fence, its label, the body, the same fence alone.
BLOCK = re.compile(r"^(`{3,})([^\n]*)\n(.*?)\n\1$", re.MULTILINE | re.DOTALL)
WRONG = {"critical": "major", "major": "minor", "minor": "trivial", "trivial": "critical"}


def instructions(prompt: str) -> str:
    """The prompt without its data blocks: what the teacher is asked to do."""
    return BLOCK.sub("", prompt)


def data_blocks(prompt: str) -> dict[str, str]:
    """The prompt's data blocks, by label."""
    return {match[2]: match[3] for match in BLOCK.finditer(prompt)}


def explained(example: dict[str, Any]) -> dict[str, Any]:
    """A severity example as one of the explanation task: the question names the severity, the
    answer says why."""
    severity, marker = example["answer"]["issue_type"], example["question"]["review"].split()[0]
    return {
        "question": {**example["question"], "issue_type": severity},
        "answer": {"explanation": f"It {marker.lower()} what the code handles, so it is {severity}."},
    }


@dataclass
class Teacher:
    seed: int = 7  # not the seed tests make their own examples with
    faults: list[str] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)  # exam, grade, preference, rate, explain
    prompts: list[str] = field(default_factory=list)
    temperatures: dict[str, list[float | None]] = field(default_factory=lambda: defaultdict(list))
    weak_markers: list[str] = field(default_factory=list)  # from the last grade
    always: str | None = None  # a judge biased by place: prefers "A" (or "B") whatever it reads
    mislabel: bool = False
    explains: bool = False  # writes questions of the explanation task, not the severity one
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _items(self, count: int) -> list[dict[str, Any]]:
        """Half aimed at the markers the student got wrong last, half covering every marker."""
        items = []
        for index in range(count):
            marker = (
                self.weak_markers[index % len(self.weak_markers)]
                if self.weak_markers and index % 2 == 0
                else list(MARKERS)[index % len(MARKERS)]
            )
            example = make_example(self.rng, marker)
            items.append({**(explained(example) if self.explains else example), "difficulty": 1 + index % 5})
        return items

    def exam(self, prompt: str) -> dict[str, Any]:
        count = int(re.search(r"Write (\d+) new exam questions", instructions(prompt))[1])  # type: ignore[index]
        return {"items": self._items(count)}

    def grade(self, prompt: str) -> dict[str, Any]:
        block = data_blocks(prompt)["data: exam results"]
        results = [json.loads(line) for line in block.splitlines()]
        wrong = [r for r in results if r["correct"] is not True]
        self.weak_markers = sorted({r["question"]["review"].split()[0] for r in wrong})
        accuracy = 1 - len(wrong) / len(results) if results else 0.0
        count = int(re.search(r'"examples", (\d+) new training examples', instructions(prompt))[1])  # type: ignore[index]
        mistakes = ", ".join(f"{m} ({MARKERS[m]})" for m in self.weak_markers if m in MARKERS) or "none"
        examples = self._items(count)
        for item in examples[::2] if self.mislabel else []:
            item["answer"] = {"issue_type": WRONG[item["answer"]["issue_type"]]}
        return {
            "score": max(1, min(10, 1 + round(9 * accuracy))),
            "feedback": f"The student misrates reviews that start with: {mistakes}.",
            "examples": examples,
        }

    def preference(self, prompt: str) -> dict[str, Any]:
        blocks = data_blocks(prompt)
        if self.always:
            return {"preferred": self.always}
        a, b = blocks["data: explanation A"], blocks["data: explanation B"]
        return {"preferred": "tie" if len(a) == len(b) else ("A" if len(a) < len(b) else "B")}  # shorter wins

    def rate(self, prompt: str) -> dict[str, Any]:
        """The student's question, answered by the rule (as the teacher vets its own examples)."""
        return {"issue_type": severity_of(data_blocks(prompt)["review"]) or "minor"}

    def explain(self, prompt: str) -> dict[str, Any]:
        del prompt  # the same reference explanation for every question
        return {"explanation": "A reference model's explanation of the issue."}

    def answer(self, prompt: str, temperature: float | None = None) -> tuple[int, Any]:
        task = instructions(prompt)  # what a data block says is not the task
        kind = (
            "exam" if "Write an exam" in task
            else "grade" if "Grade the exam" in task
            else "explain" if task.startswith("Task: explain")  # as the reference model
            else "rate" if task.startswith("Task: rate")  # a question of its own, asked again
            else "preference"
        )  # fmt: skip
        with self.lock:
            self.calls[kind] += 1
            self.prompts.append(prompt)
            self.temperatures[kind].append(temperature)
            fault = self.faults.pop(0) if self.faults else None
            if fault == "http_500":
                return 500, {"error": {"message": "teacher overloaded", "type": "server_error"}}
            if fault == "invalid_json":
                return 200, '{"items": [{"question": '
            value = getattr(self, kind)(prompt)
        key = "items" if kind == "exam" else "examples"
        if kind in ("preference", "explain", "rate"):
            return 200, json.dumps(value)
        if fault == "wrong_labels":
            for item in value[key][::2]:
                item["answer"] = {"issue_type": "catastrophic"}
        elif fault == "empty":
            value[key] = []
        elif fault == "duplicates":
            value[key] = value[key][:1] * len(value[key])
        elif fault == "no_feedback" and kind == "grade":
            value["feedback"] = ""
        return 200, json.dumps(value)


def _completion(content: str, prompt: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-teacher",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4,
                  "total_tokens": (len(prompt) + len(content)) // 4},
    }  # fmt: skip


class Answers(Protocol):
    """What the server needs of a teacher double: a status and a JSON body for a prompt."""

    def answer(self, prompt: str, temperature: float | None = None) -> tuple[int, Any]: ...


def teacher_app(teacher: Answers) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]  # the user's message: the system one is the student's
        status, content = teacher.answer(prompt, body.get("temperature"))
        if status != 200:
            return JSONResponse(content, status_code=status)
        return JSONResponse(_completion(content, prompt))

    return app


@contextmanager
def teacher_server(teacher: Answers) -> Iterator[str]:
    """Yields the teacher's base URL (ending in /v1)."""
    with live_server(teacher_app(teacher)) as url:
        yield f"{url}/v1"
