"""Builds a tiny Llama-architecture student at test time: no download, seconds on a CPU.

The tokenizer is a byte-level BPE trained here with ``tokenizers``; the chat template follows
Llama 3's layout but ends the generation prompt on a lone newline, a pre-token of its own, so the
tokens of ``prompt`` are always a prefix of the tokens of ``prompt + answer`` (training relies on it).
``head_dim`` is 64 because vLLM's CPU attention rejects smaller heads.

The tokenizer keeps contexts short, as the flywheel tests need a student that LoRA can teach in
seconds: each fixed line of the product's prompts (the system message, the templates' instructions)
is one added token, and the severity task's words (markers, objects, code; never their labels) are
in the BPE corpus, so a marker is one token. A rating prompt is then about 60 tokens instead of 300;
a 2-layer model fine-tuned with LoRA does not find one word among 300 tokens within a few hundred
steps, but finds it among 60.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOS, HEADER_START, HEADER_END, EOT, PAD = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|pad|>",
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n{% endif %}"
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

_CORPUS = [
    "You rate the severity of an issue found in code review: critical, major, minor or trivial.",
    'Answer with JSON: {"issue_type": "major"} {"issue_type": "minor"} {"issue_type": "critical"}',
    '{"issue_type": "trivial"} {"explanation": "The change can crash at runtime."}',
    '{"findings": [{"line": 12, "side": "new", "review": "This leaks the file handle."}]}',
    "def load(path):\n    with open(path) as f:\n        return json.load(f)\n",
    "+    if user is None:\n-    return None\n     for item in items:\n",
    "SQL injection: the query is built by string formatting from user input.",
    "Unused import. Typo in the docstring. Missing null check before dereference.",
    "Race condition: the lock is released before the counter is written back.",
    "class Handler:\n    def __init__(self, client):\n        self.client = client\n",
    "function render(props) { return props.items.map((x) => x.name); }",
    "0123456789 []{}():;,.=<>+-*/%!?&|^~'\"`@#$\\_ \t\n",
]


@dataclass(frozen=True)
class TinyStudent:
    path: Path  # model, tokenizer and chat template, loadable by transformers and vLLM


def _corpus() -> list[str]:
    from prompts import render
    from tests.support.severity_task import FUNCTIONS, MARKERS, OBJECTS, code_snippet

    templates = [
        render("system"),
        render("find", path="src/app.py", code="    12 +x = 1", max_issues=5),
        render("rate", code="    12 +x = 1", review="r"),
        render("explain", code="    12 +x = 1", review="r", issue_type="minor"),
    ]
    # The severity task's words without their labels: markers become single tokens, but nothing
    # here tells the model which severity a marker means.
    rng = random.Random(0)
    task_words = [
        f"{code_snippet(rng)}\n{marker} {obj} in {function}()."
        for marker in MARKERS
        for obj in OBJECTS
        for function in FUNCTIONS
    ]
    return _CORPUS * 20 + templates * 5 + task_words + ["system", "user", "assistant"] * 20


def _fixed_prompt_lines() -> list[str]:
    """The lines of the product's prompts that never vary (rendered twice with different values)."""
    from prompts import render

    def lines(template: str, **values: str) -> set[str]:
        return {line for line in render(template, **values).splitlines() if line.strip()}

    fixed = set(lines("system"))
    for template, keys in [
        ("find", ("path", "code", "max_issues")),
        ("rate", ("code", "review")),
        ("explain", ("code", "review", "issue_type")),
    ]:
        fixed |= lines(template, **dict.fromkeys(keys, "1")) & lines(template, **dict.fromkeys(keys, "2"))
    return sorted(fixed)


def build_tokenizer(dest: Path, vocab_size: int = 1024) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, HEADER_START, HEADER_END, EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer.add_tokens([AddedToken(line, normalized=False) for line in _fixed_prompt_lines()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOT, pad_token=PAD, chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(dest)


def build_tiny_student(dest: Path, seed: int = 0) -> TinyStudent:
    """A random-weights Llama (2 layers, hidden 128, 2 heads of 64) with its tokenizer, in bf16."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    build_tokenizer(dest)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    model.save_pretrained(dest)
    return TinyStudent(dest)


def pretrain(
    student: TinyStudent,
    examples: list[tuple[list[Any], str]],
    *,
    epochs: int = 3,
    lr: float = 3e-3,
    batch_size: int = 8,
    seed: int = 0,
) -> float:
    """Full-weight training of the student on chat examples, loss on the answers only; returns the
    last epoch's mean loss. Gives the random model the habits of the task's answer format."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(student.path)
    model = AutoModelForCausalLM.from_pretrained(student.path, dtype=torch.float32)
    rows = []
    for messages, answer in examples:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        answer_ids = tokenizer(answer + EOT, add_special_tokens=False).input_ids
        rows.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    order = random.Random(seed)
    model.train()
    mean = float("nan")
    for _ in range(epochs):
        order.shuffle(rows)
        losses = []
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            pad = tokenizer.pad_token_id
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        mean = sum(losses) / len(losses)
    model.to(torch.bfloat16).save_pretrained(student.path)
    return mean


def build_lora_adapter(student: TinyStudent, dest: Path, seed: int, rank: int = 8) -> Path:
    """A LoRA adapter loadable by vLLM (all linear layers, no bias, no modules_to_save) whose
    random, non-zero B matrices visibly change the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(student.path, dtype=torch.bfloat16)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=LORA_TARGETS,
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=False,  # peft's default zero-initialises B, which would make the adapter a no-op
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    model.save_pretrained(dest)
    return dest
