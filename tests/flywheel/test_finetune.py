"""LoRA fine-tuning (flywheel.finetune) on the tiny student: the loss covers only the answer, the
adapter is one vLLM loads, and the student really learns the synthetic severity task (a review's
first word decides its severity), from chance to at least 0.8 on held-out questions. Training
hygiene: warmup, one sequence length with over-long examples left out and counted, checkpointing
only on a GPU, and a training record (settings, library versions, data hash) with each adapter."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from flywheel.finetune import (
    SERVED_CONTEXT,
    TRAINING_FILE,
    AdapterIncompatible,
    Chat,
    FinetuneConfig,
    FinetuneResult,
    build_trainer,
    chat_dataset,
    check_vllm_compatible,
    finetune,
    fitting,
    read_result,
    tokenize_chats,
    training_record,
    write_job,
)
from prompts import conversation
from tests.support.severity_task import make_examples
from tests.support.tiny_model import EOT, TinyStudent

# peft reads an attribute that transformers 5 renamed; nothing to act on
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

# What makes the 2-layer tiny student learn the task from 100-300 examples in 10-25 s on 2 CPU cores.
TINY_FINETUNE = {
    "rank": 16,
    "alpha": 32,
    "learning_rate": 3e-3,
    "epochs": 16,
    "batch_size": 8,
    "dropout": 0.0,
}
LABELS = ["critical", "major", "minor", "trivial"]


def chats(rows: list[dict[str, Any]]) -> list[Chat]:
    return [
        (
            conversation("rate", code=row["question"]["code"], review=row["question"]["review"]),
            json.dumps(row["answer"], separators=(",", ":")),
        )
        for row in rows
    ]


@torch.no_grad()
def accuracy(student: TinyStudent, rows: list[dict[str, Any]], adapter: Path | None = None) -> float:
    """How often the label the model likes best after the prompt is the right one: the four
    answers are scored by their tokens' log-probabilities, as vLLM's enum-constrained decoding picks."""
    tokenizer = AutoTokenizer.from_pretrained(student.path)
    model = AutoModelForCausalLM.from_pretrained(student.path, dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    correct = 0
    for messages, answer in chats(rows):
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        options = [
            tokenizer(
                prompt + json.dumps({"issue_type": label}, separators=(",", ":")), add_special_tokens=False
            ).input_ids
            for label in LABELS
        ]
        width = max(map(len, options))
        ids = torch.tensor([o + [tokenizer.pad_token_id] * (width - len(o)) for o in options])
        mask = torch.tensor([[1] * len(o) + [0] * (width - len(o)) for o in options])
        logp = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
        scores = [
            sum(logp[i, t - 1, o[t]].item() for t in range(start, len(o))) for i, o in enumerate(options)
        ]
        best = LABELS[max(range(len(LABELS)), key=scores.__getitem__)]
        correct += json.dumps({"issue_type": best}, separators=(",", ":")) == answer
    return correct / len(rows)


@pytest.fixture(scope="module")
def trained(tiny_student: TinyStudent, tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    """One fine-tune on a modest curriculum: 192 questions, 16 per marker."""
    out = tmp_path_factory.mktemp("finetune") / "severity-v1"
    config = FinetuneConfig.from_overrides(TINY_FINETUNE)
    return finetune(tiny_student.path, chats(make_examples(192, seed=7)), out, config, show_progress=True)


def test_the_loss_covers_the_answer_and_its_end_of_turn_only(
    tiny_student: TinyStudent, tmp_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_student.path)
    model = AutoModelForCausalLM.from_pretrained(tiny_student.path, dtype=torch.float32)
    examples = chats(make_examples(3, seed=1))
    examples[1] = (examples[1][0], '{"issue_type":"trivial"}')  # a shorter answer: the batch is padded
    trainer = build_trainer(model, tokenizer, chat_dataset(examples), tmp_path, FinetuneConfig(batch_size=3))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(examples))])
    for row, (messages, answer) in enumerate(examples):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        real = batch["attention_mask"][row].bool()
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(ids[real]) == prompt + answer + EOT  # the template, as vLLM renders it
        assert tokenizer.decode(ids[labels != -100]) == answer + EOT
        in_loss = (labels != -100).nonzero().flatten().tolist()
        assert in_loss == list(range(int(real.sum()) - len(in_loss), int(real.sum())))  # one span, at the end
        assert (labels[~real] == -100).all()  # no padding in the loss


def test_the_lean_loss_is_the_models_own_loss_and_gradients(
    tiny_student: TinyStudent, tmp_path: Path
) -> None:
    """The trainer reads the LM head at the trained positions only (flywheel.finetune's speed-up);
    its loss and gradients are those of the model's own loss on the same labels."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_student.path)
    model = AutoModelForCausalLM.from_pretrained(tiny_student.path, dtype=torch.float32)
    examples = chats(make_examples(4, seed=5))
    examples[2] = (examples[2][0], '{"issue_type":"trivial"}')  # answers end at different places
    config = FinetuneConfig(batch_size=4, dropout=0.0)
    trainer = build_trainer(model, tokenizer, chat_dataset(examples), tmp_path, config)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(examples))])
    peft_model = trainer.model
    trained = [p for p in peft_model.parameters() if p.requires_grad]

    def gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        return [g.clone() for g in torch.autograd.grad(loss, trained)]

    ours = trainer.compute_loss(peft_model, dict(batch), num_items_in_batch=None)
    own = peft_model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss
    assert ours.item() == pytest.approx(own.item(), rel=1e-5)
    for mine, theirs in zip(gradients(ours), gradients(own), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    items = (batch["labels"][:, 1:] != -100).sum()  # as Trainer passes it: the trained tokens
    assert trainer.compute_loss(peft_model, dict(batch), num_items_in_batch=items).item() == pytest.approx(
        own.item(), rel=1e-5
    )


def test_the_learning_rate_warms_up_by_default(tiny_student: TinyStudent, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_student.path)
    model = AutoModelForCausalLM.from_pretrained(tiny_student.path, dtype=torch.float32)
    dataset = chat_dataset(chats(make_examples(8, seed=2)))
    trainer = build_trainer(model, tokenizer, dataset, tmp_path, FinetuneConfig())
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    rates = []
    for _ in range(10):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    peak = FinetuneConfig().learning_rate
    assert rates[0] == 0.0
    assert rates[:6] == sorted(rates[:6])  # 5 warmup steps: 5% of 100
    assert rates[5] == pytest.approx(peak)
    assert rates[9] < peak  # then the linear decay


def test_the_sequence_length_is_the_served_context_unless_given() -> None:
    assert FinetuneConfig().max_seq_length is None
    assert FinetuneConfig().for_serving(4096).max_seq_length == 4096  # what vLLM says it serves
    assert FinetuneConfig().for_serving(None).max_seq_length == SERVED_CONTEXT == 8192
    assert FinetuneConfig(max_seq_length=1024).for_serving(4096).max_seq_length == 1024


def test_over_long_examples_are_left_out_and_counted_never_cut(
    tiny_student: TinyStudent, tmp_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_student.path)
    rows = [
        (messages, answer[:-1] + f',"note":"{"x" * 8 * i}"}}')
        for i, (messages, answer) in enumerate(chats(make_examples(6, seed=3)))
    ]  # answers of different lengths
    tokens = tokenize_chats(chat_dataset(rows), tokenizer)
    lengths = [len(ids) for ids in tokens["input_ids"]]
    limit = sorted(lengths)[2]  # the three shortest fit, one of them exactly
    keep = fitting(tokens, limit)
    assert keep == [index for index, length in enumerate(lengths) if length <= limit]
    model = AutoModelForCausalLM.from_pretrained(tiny_student.path, dtype=torch.float32)
    config = FinetuneConfig(max_seq_length=limit, batch_size=len(keep))
    trainer = build_trainer(model, tokenizer, tokens.select(keep), tmp_path, config)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(keep))])
    for row, index in enumerate(keep):
        labels = batch["labels"][row]
        assert tokenizer.decode(labels[labels != -100]) == rows[index][1] + EOT  # whole, not cut
    shortest = min(lengths)
    with pytest.raises(ValueError, match=f"all 6 training examples are longer than {shortest - 1} tokens"):
        fitting(tokens, shortest - 1)
    tuning = FinetuneConfig(max_seq_length=limit, epochs=1.0, batch_size=2, rank=4)
    result = finetune(tiny_student.path, rows, tmp_path / "adapter", tuning, show_progress=False)
    assert result.too_long == len(rows) - len(keep) >= 1  # counted in the result and its record
    assert result.training["examples"] == len(keep)


def test_activation_checkpointing_is_off_on_a_cpu_unless_asked(
    tiny_student: TinyStudent, tmp_path: Path
) -> None:
    """On by default only with a CUDA GPU (there memory runs out; here it only costs time); asked
    for, it trains (the path a GPU takes by default)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_student.path)
    dataset = chat_dataset(chats(make_examples(4, seed=6)))

    def trainer(config: FinetuneConfig) -> Any:
        model = AutoModelForCausalLM.from_pretrained(tiny_student.path, dtype=torch.float32)
        return build_trainer(model, tokenizer, dataset, tmp_path, config)

    assert not torch.cuda.is_available()
    assert trainer(FinetuneConfig()).args.activation_checkpointing is False
    asked = trainer(FinetuneConfig(gradient_checkpointing=True, batch_size=2, epochs=1.0))
    assert asked.args.activation_checkpointing is True
    asked.train()
    assert asked.model.is_gradient_checkpointing  # transformers turned it on for the run
    assert asked.state.global_step == 2


def test_the_training_record_hashes_the_chats_trained_on() -> None:
    rows = chats(make_examples(6, seed=4))
    config = FinetuneConfig(max_seq_length=512)
    record = training_record(config, chat_dataset(rows), too_long=2)
    assert record["examples"] == 6
    assert record["too_long"] == 2
    assert record["config"]["max_seq_length"] == 512
    assert record["config"]["bf16"] is False  # resolved: this machine has no CUDA GPU
    assert record["config"]["gradient_checkpointing"] is False  # off on a CPU, where it only costs time
    assert record["config"]["warmup_ratio"] == 0.05
    assert record["libraries"] == {
        name: importlib.metadata.version(name) for name in ("torch", "transformers", "peft", "trl")
    }
    digest = record["data_sha256"]
    assert training_record(config, chat_dataset(rows[::-1]), 2)["data_sha256"] == digest  # order-free
    changed = [*rows[:-1], (rows[-1][0], '{"issue_type":"trivial"}')]
    assert training_record(config, chat_dataset(changed), 2)["data_sha256"] != digest
    assert training_record(config, chat_dataset(rows[:-1]), 2)["data_sha256"] != digest
    assert FinetuneConfig(gradient_checkpointing=True).gradient_checkpointing is True  # configurable


def test_fine_tuning_teaches_the_student(trained: FinetuneResult, tiny_student: TinyStudent) -> None:
    heldout = make_examples(48, seed=123)  # other code, objects and seeds than the curriculum
    before = accuracy(tiny_student, heldout)
    after = accuracy(tiny_student, heldout, trained.adapter_dir)
    learnt = f"held-out accuracy {before:.2f} -> {after:.2f}; fine-tune {trained.seconds:.1f} s"
    assert before <= 0.4, learnt  # about chance: four balanced classes
    assert after >= 0.8, learnt
    steps = [step for step, _ in trained.losses]
    assert steps == sorted(steps)
    assert steps[-1] == 192 // 8 * 16
    assert trained.losses[-1][1] < trained.losses[0][1] / 2


def test_the_result_sums_up_the_run(trained: FinetuneResult, tiny_student: TinyStudent) -> None:
    out = trained.adapter_dir
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    check_vllm_compatible(out, max_rank=16)
    assert not list(out.glob("checkpoint-*"))  # only the adapter is saved
    assert trained.loss_plot == out / "loss.png"
    assert trained.loss_plot.read_bytes()[:4] == b"\x89PNG"
    tokenizer = AutoTokenizer.from_pretrained(tiny_student.path)
    tokens = sum(
        len(tokenizer(prompt_and_answer(tokenizer, messages, answer), add_special_tokens=False).input_ids)
        for messages, answer in chats(make_examples(192, seed=7))
    )
    assert trained.train_tokens == 16 * tokens  # every epoch, no padding
    assert trained.tokens_per_s > 0
    assert trained.peak_memory_mb > 0
    assert trained.seconds > 0
    assert trained.too_long == 0
    assert trained.training["examples"] == 192
    assert trained.training["config"]["max_seq_length"] == SERVED_CONTEXT
    assert json.loads((out / TRAINING_FILE).read_text()) == trained.training  # kept with the adapter


def prompt_and_answer(tokenizer: Any, messages: list[Any], answer: str) -> str:
    text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    assert isinstance(text, str)
    return text


def lora_adapter(student: TinyStudent, dest: Path, **settings: Any) -> Path:
    base = AutoModelForCausalLM.from_pretrained(student.path, dtype=torch.float32)
    config = LoraConfig(**{"r": 8, "target_modules": "all-linear", "task_type": "CAUSAL_LM", **settings})
    get_peft_model(base, config).save_pretrained(dest)
    return dest


@pytest.mark.parametrize(
    ("settings", "max_rank", "says"),
    [
        ({"modules_to_save": ["lm_head"]}, 16, "modules_to_save"),
        ({"use_dora": True}, 16, "DoRA"),
        ({"bias": "lora_only"}, 16, "bias='none'"),
        ({"r": 32}, 16, "--max-lora-rank 16"),
    ],
)
def test_vllm_compatibility_check_refuses_what_vllm_cannot_load(
    tiny_student: TinyStudent, tmp_path: Path, settings: dict[str, Any], max_rank: int, says: str
) -> None:
    adapter = lora_adapter(tiny_student, tmp_path / "adapter", **settings)
    with pytest.raises(AdapterIncompatible, match=says.replace("-", r"\-")):
        check_vllm_compatible(adapter, max_rank)


def test_vllm_compatibility_check_needs_the_files(tiny_student: TinyStudent, tmp_path: Path) -> None:
    adapter = lora_adapter(tiny_student, tmp_path / "adapter")
    check_vllm_compatible(adapter, max_rank=8)
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterIncompatible, match=r"adapter_model\.safetensors is missing"):
        check_vllm_compatible(adapter, max_rank=8)
    with pytest.raises(AdapterIncompatible, match=r"adapter_config\.json is missing"):
        check_vllm_compatible(tmp_path / "elsewhere", max_rank=8)


def test_config_from_overrides() -> None:
    config = FinetuneConfig.from_overrides({"learning_rate": 1, "target_modules": ["q_proj"], "bf16": None})
    assert config.learning_rate == 1.0
    assert isinstance(config.learning_rate, float)
    assert config.target_modules == ["q_proj"]
    assert config.bf16 is None
    assert config.rank == 16
    assert FinetuneConfig.from_overrides(config.model_dump()) == config  # as a job file carries it
    with pytest.raises(ValueError, match=r"unknown fine-tuning setting 'lr'; valid settings: rank, alpha"):
        FinetuneConfig.from_overrides({"lr": 1e-4})
    for key, value in [("rank", "16"), ("rank", 1.5), ("packing", "yes"), ("epochs", True), ("bf16", 1)]:
        with pytest.raises(ValueError, match=f"setting '{key}' must be"):
            FinetuneConfig.from_overrides({key: value})
    with pytest.raises(ValueError, match=r"'target_modules' must be str or list\[str\], not \[1\]"):
        FinetuneConfig.from_overrides({"target_modules": [1]})
    with pytest.raises(ValueError, match=r"'bf16' must be bool or None, not 1$"):  # the first, in order
        FinetuneConfig.from_overrides({"bf16": 1, "lr": 1e-4})
    with pytest.raises(ValueError, match="frozen"):
        config.rank = 4  # type: ignore[misc]


def test_no_examples_is_an_error(tiny_student: TinyStudent, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no training examples"):
        finetune(tiny_student.path, [], tmp_path / "adapter")


def test_a_job_file_runs_in_another_process(tiny_student: TinyStudent, tmp_path: Path) -> None:
    """The path `accelerate launch -m flywheel.finetune JOB.json` takes on several GPUs."""
    config = FinetuneConfig.from_overrides({**TINY_FINETUNE, "epochs": 1, "rank": 4})
    out = tmp_path / "adapter"
    job = write_job(tmp_path / "job.json", tiny_student.path, chats(make_examples(8)), out, config)
    done = subprocess.run(
        [sys.executable, "-m", "flywheel.finetune", str(job)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],  # the repository
    )
    assert done.returncode == 0, done.stderr
    result = read_result(out)
    assert result.adapter_dir == out
    assert result.train_tokens > 0
    assert len(result.losses) == 1
    check_vllm_compatible(out, max_rank=4)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    with pytest.raises(FileNotFoundError, match="did not finish"):
        read_result(tmp_path)
