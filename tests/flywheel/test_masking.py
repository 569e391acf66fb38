"""The loss of fine-tuning covers exactly the answer and its end-of-turn token, with real chat
templates: Llama 3's (the production student's; its template text, special tokens and pre-tokenizer
rules on a small BPE trained here) and SmolLM2's ChatML (the demo student's own tokenizer). Neither
the prompt nor the assistant header (what vLLM's generation prompt supplies) is trained on, nor
ChatML's newline after ``<|im_end|>``, which the student never generates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from flywheel.finetune import Chat, FinetuneConfig, build_trainer, chat_dataset
from prompts import conversation, render
from tests.support.demo_student import cache_dir, prepare_demo_student

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

# Meta-Llama-3-8B-Instruct's tokenizer_config.json: its chat template and its pre-tokenizer's split.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

ANSWERS = [
    '{"issue_type":"critical"}',
    '{"issue_type":"minor"}',
    '{"explanation":"The lock is released before the counter is written back."}',
]


def llama3_tokenizer(dest: Path) -> PreTrainedTokenizerBase:
    """A byte-level BPE with Llama 3's pre-tokenizer, special tokens, BOS post-processor, template and
    eos (``<|eot_id|>``, as the Instruct model's tokenizer has it); no pad token, like Llama 3."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [render("system"), render("rate", code="    12 +x = 1", review="r"), *ANSWERS, "\n\n"] * 20
    tokenizer.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=LLAMA3_SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    fast.chat_template = LLAMA3_TEMPLATE
    fast.save_pretrained(dest)
    return AutoTokenizer.from_pretrained(dest)


def tiny_model(tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """Random weights are enough: what is checked is which tokens the loss covers."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32,
    )  # fmt: skip
    return LlamaForCausalLM(config).to(torch.float32)


def examples() -> list[Chat]:
    code, review = "    12 +    lock.release()\n    13 +    counter += 1", "Race condition on the counter."
    return [(conversation("rate", code=code, review=review), answer) for answer in ANSWERS]


def losses_of(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> list[tuple[str, list[int], list[int]]]:
    """For each example, the prompt as vLLM renders it, the batch's tokens and the trained ones."""
    rows = examples()
    config = FinetuneConfig(batch_size=len(rows))
    trainer = build_trainer(tiny_model(tokenizer), tokenizer, chat_dataset(rows), tmp_path, config)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    found = []
    for row, (messages, _) in enumerate(rows):
        real = batch["attention_mask"][row].bool()
        ids, labels = batch["input_ids"][row][real], batch["labels"][row][real]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert isinstance(prompt, str)
        found.append((prompt, ids.tolist(), ids[labels != -100].tolist()))
        assert (batch["labels"][row][~real] == -100).all()  # no padding in the loss
    return found


def check(tokenizer: PreTrainedTokenizerBase, tmp_path: Path, end_of_turn: str, header: str) -> None:
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    for (prompt, ids, trained), answer in zip(losses_of(tokenizer, tmp_path), ANSWERS, strict=True):
        assert prompt.endswith(header)  # vLLM's generation prompt: the header the student never writes
        expected = [*tokenizer(answer, add_special_tokens=False).input_ids, end_id]
        assert trained == expected, tokenizer.decode(trained)  # the answer and the end of turn, exactly
        start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        assert ids[start : start + len(expected)] == expected  # right after the prompt, in place
        assert tokenizer.decode(ids[:start]) == prompt  # every token before it, the header too: no loss


def test_llama3_template_trains_on_the_answer_and_eot_only(tmp_path: Path) -> None:
    tokenizer = llama3_tokenizer(tmp_path / "llama3")
    assert tokenizer("x").input_ids[0] == tokenizer.bos_token_id  # Llama 3's post-processor adds BOS
    check(tokenizer, tmp_path, "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n")
    _, ids, _ = losses_of(tokenizer, tmp_path)[0]
    assert ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, not a second one


@pytest.mark.smollm2
def test_smollm2_chatml_trains_on_the_answer_and_im_end_only(tmp_path: Path) -> None:
    student = prepare_demo_student(cache_dir())
    tokenizer = AutoTokenizer.from_pretrained(student.path)
    assert tokenizer.eos_token == "<|im_end|>"
    full: Any = tokenizer.apply_chat_template(
        [*examples()[0][0], {"role": "assistant", "content": ANSWERS[0]}], tokenize=False
    )
    assert full.endswith("<|im_end|>\n")  # the newline after the end of turn: rendered, never trained
    check(tokenizer, tmp_path, "<|im_end|>", "<|im_start|>assistant\n")
