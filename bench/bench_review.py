"""Benchmark: one review of a 60-hunk diff against the tiny-model vLLM server, with all model calls
in flight at once versus one call at a time (the same pipeline, LLM client concurrency 1).

    .venv/bin/python bench/bench_review.py [--concurrency 16] [--chunk-tokens 2500]

Builds the tiny student and starts vLLM itself (about a minute); prints wall times and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from bot.diff import parse_diff
from bot.llm import LLMClient
from bot.models import Severity, Task
from bot.review.localgit import diff_range
from bot.review.pipeline import ReviewResult, review_diff
from tests.support.gitrepo import commit, git, init_repo
from tests.support.synthetic import review_examples
from tests.support.tiny_model import build_tiny_student, pretrain
from tests.support.vllm_server import start_vllm

FILES, HUNKS_PER_FILE, GAP = 12, 5, 12


def sixty_hunk_repo(root: Path) -> Path:
    def source(edited: bool) -> str:
        lines = []
        for i in range(HUNKS_PER_FILE * GAP):
            changed = edited and i % GAP == GAP // 2
            lines.append(f"    total = total * {i} + check(item_{i})\n" if changed else f"    total += {i}\n")
        return "def compute(total, check):\n" + "".join(lines) + "    return total\n"

    repo = init_repo(root / "repo", {f"mod_{n}.py": source(False) for n in range(FILES)})
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, {f"mod_{n}.py": source(True) for n in range(FILES)}, "edit")
    return repo


async def one_review(
    base_url: str, concurrency: int, chunk_tokens: int, diff: object
) -> tuple[float, ReviewResult]:
    models = dict.fromkeys(Task, "tiny-student")
    async with LLMClient(base_url, "EMPTY", role="student", concurrency=concurrency) as llm:
        started = time.perf_counter()
        result = await review_diff(diff, llm, models, threshold=Severity.TRIVIAL, chunk_tokens=chunk_tokens)  # type: ignore[arg-type]
        return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chunk-tokens", type=int, default=2500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        diff = parse_diff(diff_range(sixty_hunk_repo(root), "main", "HEAD"))
        hunks = sum(len(f.hunks) for f in diff.files)
        student = build_tiny_student(root / "student")
        pretrain(student, review_examples(80), epochs=3)  # as in the tests: short, non-empty answers
        server = start_vllm(student.path, "tiny-student", {}, root / "vllm.log")
        try:
            print(f"vLLM up in {server.started_in_s:.0f} s; diff: {len(diff.files)} files, {hunks} hunks")
            asyncio.run(one_review(server.base_url, args.concurrency, args.chunk_tokens, diff))  # warm-up
            timings = {}
            for label, concurrency in [("sequential", 1), ("concurrent", args.concurrency)]:
                seconds, result = asyncio.run(
                    one_review(server.base_url, concurrency, args.chunk_tokens, diff)
                )
                calls = sum(stage.calls for stage in result.stats.stages.values())
                timings[label] = seconds
                findings, failed = len(result.findings), len(result.failed)
                print(
                    f"{label:>11} (concurrency {concurrency:>2}): {seconds:6.2f} s wall, {calls} calls, "
                    f"{result.stats.chunks} chunks, {findings} findings, {failed} failed"
                )
            ratio = timings["concurrent"] / timings["sequential"]
            print(f"concurrent / sequential wall time: {ratio:.2f} (target <= 0.40)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
