"""Does the flywheel teach a real language model? The short version of bench/flywheel_real_model.py:
SmolLM2-135M-Instruct on vLLM, one round of the real ``reviewbot flywheel run`` with the pool teacher
double, on analyzer-labelled questions from the standard library; the adapter must rate the held-out
questions (files the run never saw) better than the base model by ``MARGIN``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import _timings
from tests.support.demo_student import SERVED_NAME
from tests.support.vllm_server import ROOT

# The adapter's gain over the base model in held-out accuracy, at the least. The base model rates
# almost everything critical; one round moves the adapter to the levels the analyzers use most, not
# yet to the rule behind each review. This profile's gains over three data draws (``--seed`` 0 / 1 /
# 2, one run each): +0.050 (0.175 -> 0.225), +0.100 (0.175 -> 0.275), +0.200 (0.163 -> 0.362); this
# test runs seed 0, the smallest, whose two printed runs gave the same figures (training and greedy
# scoring are deterministic on one machine). Other runs: +0.08 and +0.125 (trial fine-tunes, 48
# questions), +0.265 (the full benchmark). A fine-tune that changes nothing (a broken loss mask, an
# adapter not loaded, a zero rate) gains 0; one that stays on critical, as a weaker one epoch at 2e-3
# did, too.
MARGIN = 0.02


@pytest.mark.smollm2
@pytest.mark.timeout(2400)  # 7-8 min on a quiet 2-core machine: data, vLLM start, a round, scoring
def test_one_round_on_real_code_beats_the_base_model(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "flywheel_real_model.py"), "--short", "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=2300, check=False,
    )  # fmt: skip
    _timings["flywheel on SmolLM2, real code, one round (bench --short)"] = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    severity = json.loads(figures.read_text())["severity"]
    rows = {row["model"]: row for row in severity["rows"]}
    base, adapter = rows[SERVED_NAME], rows["severity-v1"]
    assert severity["heldout"] >= 70
    assert base["failed"] == adapter["failed"] == 0
    assert adapter["accuracy"] >= base["accuracy"] + MARGIN, done.stdout[-3000:]
    assert [entry["round"] for entry in severity["rounds"]] == [0, 1]
    assert severity["rounds"][1]["train"]["tokens_per_s"] > 0
