"""GPU benchmark: LoRA fine-tuning throughput of the flywheel's trainer (flywheel.finetune's
SFTTrainer, LoRA r 16 / alpha 32 on all linear layers) on a Llama-3-8B-architecture model with random
bf16 weights, built directly on the GPU (no download), on random tokens in sequences of 2048.

    python bench/gpu_finetune.py [--steps 30] [--warmup 5] [--batch-size 4] [--seq-len 2048]
                                 [--grad-checkpointing] [--packing | --no-packing]
    python bench/gpu_finetune.py --tiny     # a small Llama on the CPU: checks the code path anywhere

Prints tokens/s over all steps and over the steps after ``--warmup`` (steady state), the peak CUDA
memory, and how they compare with published single-GPU LoRA figures for Llama 3 8B (torchtune, bf16,
packed 2048-token sequences: about 3,100 tokens/s on an RTX 4090, 4,700 on an RTX A6000) and with the
target of at least 10,000 tokens/s on an H100.

Packing: by default on when FlashAttention 2 is installed (its variable-length kernels keep packed
documents apart at no cost); without it, SDPA would attend over each flattened batch with a
block-diagonal mask, so the sequences are then equal-length rows with no padding, the same tokens.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for flywheel and tests.support

REFERENCES = {"RTX 4090 (torchtune)": 3_100, "RTX A6000 (torchtune)": 4_700}
TARGET_H100 = 10_000
LLAMA3_8B: dict[str, Any] = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "rope_theta": 500000.0,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
TINY: dict[str, Any] = {
    **LLAMA3_8B,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps to run (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the steady state")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step (default 4)")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (default 2048)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pack random-length documents into --seq-len rows (default: on with FlashAttention 2)",
    )
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument(
        "--tiny", action="store_true", help="a 2-layer Llama on the CPU (or GPU): a smoke test"
    )
    args = parser.parse_args(argv)
    if args.tiny and "--seq-len" not in (argv if argv is not None else sys.argv):
        args.seq_len = 256
    return args


def random_documents(
    rng: random.Random, args: argparse.Namespace, vocab: int, packing: bool
) -> list[list[int]]:
    """Enough random-token documents for ``--steps`` steps; ids above 15 avoid the special tokens."""
    rows = args.steps * args.batch_size
    if not packing:
        return [[rng.randrange(16, vocab) for _ in range(args.seq_len)] for _ in range(rows)]
    documents, tokens = [], 0
    while tokens < rows * args.seq_len * 1.1:  # best-fit packing leaves some rows a little short
        length = rng.randint(args.seq_len // 8, args.seq_len)
        documents.append([rng.randrange(16, vocab) for _ in range(length)])
        tokens += length
    return documents


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    from transformers.utils import is_flash_attn_2_available

    from flywheel.finetune import FinetuneConfig, build_trainer, check_vllm_compatible, save_adapter
    from tests.support.tiny_model import build_tokenizer

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("no CUDA GPU here; run with --tiny to check the code path on the CPU")
    device = torch.device("cuda" if cuda else "cpu")
    flash = cuda and is_flash_attn_2_available()
    packing = flash if args.packing is None else args.packing
    attention = "flash_attention_2" if flash else "sdpa"
    dtype = torch.bfloat16 if cuda else torch.float32

    started = time.perf_counter()
    shape = TINY if args.tiny else LLAMA3_8B
    config = LlamaConfig(**shape, bos_token_id=0, eos_token_id=3, pad_token_id=4)
    with device:  # weights are created, and randomly initialised, where they will train
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    built_s = time.perf_counter() - started
    total_params = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tokenizer(root / "tokenizer")  # the trainer wants one; its ids (0-4 special) fit any vocab
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        documents = random_documents(random.Random(0), args, shape["vocab_size"], packing)
        tuning = FinetuneConfig(
            rank=args.rank,
            alpha=args.alpha,
            dropout=0.0,
            learning_rate=2e-4,
            epochs=1,
            batch_size=args.batch_size,
            max_seq_length=args.seq_len,
            packing=packing,
            bf16=cuda,
            gradient_checkpointing=args.grad_checkpointing,
            logging_steps=1,
        )
        trainer = build_trainer(model, tokenizer, Dataset.from_dict({"input_ids": documents}), root, tuning)
        trainer.args.max_steps = args.steps  # exactly --steps, whatever the packing made of the documents
        clock = step_clock(cuda)
        trainer.add_callback(clock)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(
            f"model: {total_params / 1e6:,.1f} M parameters ({'tiny' if args.tiny else 'Llama 3 8B shape'}), "
            f"{dtype}, {attention}, built on {device} in {built_s:.1f} s; LoRA r {args.rank}: "
            f"{trainable / 1e6:.1f} M trainable"
        )
        print(
            f"run: {args.steps} steps x {args.batch_size} sequences of {args.seq_len} tokens, "
            f"packing {'on' if packing else 'off'}, activation checkpointing "
            f"{'on' if args.grad_checkpointing else 'off'}"
        )
        clock_started = time.perf_counter()
        output = trainer.train()
        result = save_adapter(
            trainer, root / "adapter", clock_started, float(output.metrics["train_runtime"])
        )
        steady = clock.tokens_per_s(args.warmup)
        check_vllm_compatible(result.adapter_dir, max_rank=args.rank)

    print(f"tokens: {result.train_tokens:,} in {output.metrics['train_runtime']:.1f} s")
    print(f"throughput, all steps: {result.tokens_per_s:,.0f} tokens/s")
    if steady:
        print(f"throughput, steps after the first {args.warmup}: {steady:,.0f} tokens/s")
    memory = f"{result.peak_memory_mb / 1024:.1f} GiB"
    print(f"peak memory: {memory} ({'CUDA max allocated' if cuda else 'process peak RSS'})")
    print(f"adapter saved and vLLM-compatible; loss {result.losses[0][1]:.3f} -> {result.losses[-1][1]:.3f}")
    if not args.tiny:
        best = steady or result.tokens_per_s
        for name, reference in REFERENCES.items():
            print(f"  vs {name} {reference:,} tokens/s: {best / reference:.2f}x")
        verdict = "meets" if best >= TARGET_H100 else "misses"
        print(f"  H100 target >= {TARGET_H100:,} tokens/s: {verdict} it ({torch.cuda.get_device_name()})")


def step_clock(cuda: bool) -> Any:
    """A TrainerCallback noting the wall time (after a CUDA sync) and the tokens seen at each step's end."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, int]] = []

        def mark(self, state: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            del args, control, kwargs  # TrainerCallback's signature; only the state is read
            self.mark(state)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            del args, control, kwargs
            self.mark(state)

        def tokens_per_s(self, skip: int) -> float | None:
            """Throughput over the steps after the first ``skip`` (CUDA warm-up, allocator growth)."""
            if len(self.marks) <= skip + 1:
                return None
            (start, seen), (end, total) = self.marks[skip], self.marks[-1]
            return (total - seen) / (end - start)

    return StepClock()


if __name__ == "__main__":
    main()
