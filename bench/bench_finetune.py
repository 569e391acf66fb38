"""Benchmark: LoRA fine-tuning throughput and peak memory on CPU with the tiny student, the project's
``finetune()`` (trl's SFTTrainer) against a plain transformers ``Trainer`` + peft baseline: the same
examples, LoRA settings, epochs and batches, the loss on the answer tokens only (the baseline masks
the prompt in its own collation).

    .venv/bin/python bench/bench_finetune.py [--examples 192] [--epochs 8] [--repeats 2]

Builds and pre-trains the tiny student (about 10 s), then runs each side in a subprocess of its own,
so that their peak resident memory does not mix, alternately ``--repeats`` times; prints the best
throughput of each, their peak memory, and the ratios ours / baseline.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from prompts import conversation
from tests.support.severity_task import make_examples
from tests.support.synthetic import review_examples
from tests.support.tiny_model import build_tiny_student, pretrain

# The settings that teach the tiny student the severity task (tests/test_finetune.py).
SETTINGS: dict[str, Any] = {"rank": 16, "alpha": 32, "learning_rate": 3e-3, "batch_size": 8, "dropout": 0.0}


def chats(count: int) -> list[tuple[list[Any], str]]:
    return [
        (
            conversation("rate", code=row["question"]["code"], review=row["question"]["review"]),
            json.dumps(row["answer"], separators=(",", ":")),
        )
        for row in make_examples(count, seed=7)
    ]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_ours(student: Path, count: int, epochs: int, out: Path) -> dict[str, float]:
    from flywheel.finetune import FinetuneConfig, finetune

    config = FinetuneConfig.from_overrides({**SETTINGS, "epochs": epochs})
    result = finetune(student, chats(count), out, config, show_progress=False)
    seconds = result.train_tokens / result.tokens_per_s
    return {"tokens": result.train_tokens, "train_s": seconds, "steps": result.losses[-1][0]}


def run_baseline(student: Path, count: int, epochs: int, out: Path) -> dict[str, float]:
    """What one would write without trl: tokenize with the chat template, mask the prompt, pad."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(student)
    rows = []
    for messages, answer in chats(count):
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": answer}], tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        ids = tokenizer(full, add_special_tokens=False).input_ids
        assert ids[: len(prompt_ids)] == prompt_ids, "the prompt must end on a token boundary"
        rows.append({"input_ids": ids, "labels": [-100] * len(prompt_ids) + ids[len(prompt_ids) :]})

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in batch)

        def padded(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (width - len(values))

        return {
            "input_ids": torch.tensor([padded(r["input_ids"], tokenizer.pad_token_id) for r in batch]),
            "labels": torch.tensor([padded(r["labels"], -100) for r in batch]),
            "attention_mask": torch.tensor([padded([1] * len(r["input_ids"]), 0) for r in batch]),
        }

    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    lora = LoraConfig(
        r=SETTINGS["rank"],
        lora_alpha=SETTINGS["alpha"],
        lora_dropout=SETTINGS["dropout"],
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=epochs,
        per_device_train_batch_size=SETTINGS["batch_size"],
        learning_rate=SETTINGS["learning_rate"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        seed=0,
    )
    trainer = Trainer(
        model=get_peft_model(model, lora),
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=collate,
    )
    output = trainer.train()
    trainer.model.save_pretrained(out)
    return {
        "tokens": trainer.state.num_input_tokens_seen,
        "train_s": output.metrics["train_runtime"],
        "steps": trainer.state.global_step,
    }


def worker(side: str, student: Path, count: int, epochs: int, out: Path) -> None:
    run = run_ours if side == "ours" else run_baseline
    figures = run(student, count, epochs, out)
    print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--student", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.student, args.examples, args.epochs, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        student = build_tiny_student(root / "student")
        pretrain(student, review_examples(80), epochs=3)  # as the tests' tiny_student fixture does
        best: dict[str, dict[str, float]] = {}
        for attempt in range(args.repeats):
            for side in ("ours", "baseline"):
                command = [
                    sys.executable, __file__, "--worker", side, "--student", str(student.path),
                    "--examples", str(args.examples), "--epochs", str(args.epochs),
                    "--out", str(root / f"{side}-{attempt}"),
                ]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                figures["tokens_per_s"] = figures["tokens"] / figures["train_s"]
                print(
                    f"{side:>8} run {attempt + 1}: {figures['tokens']:.0f} tokens, "
                    f"{figures['steps']:.0f} steps, {figures['train_s']:.1f} s, "
                    f"{figures['tokens_per_s']:,.0f} tokens/s, "
                    f"peak RSS {figures['peak_rss_mb']:.0f} MB"
                )
                if side not in best or figures["tokens_per_s"] > best[side]["tokens_per_s"]:
                    best[side] = figures
        ours, baseline = best["ours"], best["baseline"]
        print(
            f"best of {args.repeats}: finetune() {ours['tokens_per_s']:,.0f} tokens/s, peak RSS "
            f"{ours['peak_rss_mb']:.0f} MB; Trainer + peft {baseline['tokens_per_s']:,.0f} tokens/s, "
            f"peak RSS {baseline['peak_rss_mb']:.0f} MB"
        )
        print(
            f"ours / baseline: throughput {ours['tokens_per_s'] / baseline['tokens_per_s']:.2f}, "
            f"peak memory {ours['peak_rss_mb'] / baseline['peak_rss_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
