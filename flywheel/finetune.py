"""LoRA fine-tuning of the student on chat examples (flywheel step 5), with peft and trl's SFTTrainer.

Each example is a prompt (system + user messages) and the answer text. The trainer gets them as a
dataset of token ids and loss masks (``tokenize_chats``): the tokenizer's own chat template renders
them as vLLM renders a prompt, and the loss covers the answer and its end-of-turn token only.
Training sees what serving sees: one sequence length, the served context by default; an example longer
than it is left out and counted, never cut. The saved adapter holds the LoRA matrices only, as vLLM
loads them at run time; ``check_vllm_compatible`` states vLLM's rules, and the registry applies it
before loading an adapter into the server. ``FinetuneResult.training`` is the record kept with the
model version: the settings as applied, the library versions and a hash of the chats trained on.

One process or many: ``accelerate launch -m flywheel.finetune JOB.json`` runs the same code on
several GPUs (see ``write_job`` and ``read_result``). The ML stack is imported lazily, so importing
this module (the CLI does) stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import resource
import sys
import time
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from datasets import Dataset  # type: ignore[import-untyped]
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
    from trl.trainer.sft_trainer import SFTTrainer

__all__ = [
    "AdapterIncompatible",
    "Chat",
    "FinetuneConfig",
    "FinetuneResult",
    "build_trainer",
    "chat_dataset",
    "check_vllm_compatible",
    "finetune",
    "fitting",
    "read_result",
    "save_adapter",
    "tokenize_chats",
    "training_record",
    "write_job",
]

Chat = tuple[list[ChatCompletionMessageParam], str]
"""(prompt messages: system and user, answer text)."""

RESULT_FILE = "result.json"
LOSS_PLOT = "loss.png"
TRAINING_FILE = "training.json"  # the training record, beside the adapter it describes

SERVED_CONTEXT = 8192  # deploy/vllm-serve.sh's MAX_MODEL_LEN: the length when no server says its own
LIBRARIES = ("torch", "transformers", "peft", "trl")  # their versions go in the training record


class AdapterIncompatible(ValueError):
    """The adapter cannot be loaded by vLLM."""


class FinetuneConfig(BaseModel):
    """LoRA and training settings. Defaults suit an 8B student on one GPU; tests pass their own.

    Strict, because the values come from JSON (the settings, a job file): a setting of the wrong type
    is refused rather than converted, so ``"16"`` is not a rank and ``true`` not a batch size (an
    int is a valid float)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"  # peft's "all-linear" leaves out lm_head, as vLLM needs
    learning_rate: float = 2e-4
    epochs: float = 2.0
    batch_size: int = 8  # per device
    gradient_accumulation: int = 1
    # None: the context the student is served with (the flywheel reads it from vLLM's /v1/models;
    # SERVED_CONTEXT elsewhere). Longer examples are left out and counted, never cut.
    max_seq_length: int | None = None
    packing: bool = False
    bf16: bool | None = None  # None: bf16 when a CUDA GPU supports it, else fp32
    seed: int = 0
    warmup_ratio: float = 0.05  # of all optimizer steps: LoRA's fresh matrices meet the full rate gently
    lr_scheduler: str = "linear"  # a transformers SchedulerType: linear, cosine, constant, ...
    weight_decay: float = 0.0
    # Trades compute for memory on long sequences or big batches. None: on with a CUDA GPU, where
    # memory is what runs out; off on a CPU, where it only costs time.
    gradient_checkpointing: bool | None = None
    logging_steps: int = 1  # how often a loss is recorded for FinetuneResult.losses and the plot

    def for_serving(self, context: int | None) -> FinetuneConfig:
        """These settings with the sequence length resolved: the one given, else the served
        ``context``, else ``SERVED_CONTEXT``."""
        if self.max_seq_length is not None:
            return self
        return self.model_copy(update={"max_seq_length": context or SERVED_CONTEXT})

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> FinetuneConfig:
        """The defaults with ``overrides`` applied (e.g. from a JSON job or the settings file); a
        ValueError names the first bad setting, in the overrides' order, and what it expected."""
        try:
            return cls.model_validate(dict(overrides))
        except ValidationError as exc:
            order = list(overrides)
            key = min((str(error["loc"][0]) for error in exc.errors()), key=order.index)
        if key not in cls.model_fields:
            raise ValueError(
                f"unknown fine-tuning setting {key!r}; valid settings: {', '.join(cls.model_fields)}"
            )
        expected = _type_name(cls.model_fields[key].annotation)
        raise ValueError(f"fine-tuning setting {key!r} must be {expected}, not {overrides[key]!r}")


DEFAULTS = FinetuneConfig()


def _type_name(hint: Any) -> str:
    """``int``, ``bool or None``, ``str or list[str]``: a setting's type as its message shows it."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return " or ".join(
        "None" if option is type(None) else option.__name__ if isinstance(option, type) else str(option)
        for option in options
    )


@dataclass(frozen=True)
class FinetuneResult:
    adapter_dir: Path
    losses: list[tuple[int, float]]  # (optimizer step, training loss) as logged
    train_tokens: int  # input tokens processed over all epochs and processes, padding excluded
    seconds: float  # the whole call: loading, tokenizing, training, saving
    tokens_per_s: float  # train_tokens over the training loop's own time
    peak_memory_mb: float  # CUDA max allocated on a GPU; else the process's peak RSS
    loss_plot: Path | None  # loss curve PNG in adapter_dir
    training: dict[str, Any] = field(default_factory=dict)  # training_record(): kept with the version

    @property
    def too_long(self) -> int:
        """Examples left out for being longer than the sequence length."""
        return int(self.training.get("too_long", 0))

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adapter_dir"] = str(self.adapter_dir)
        data["loss_plot"] = str(self.loss_plot) if self.loss_plot else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FinetuneResult:
        return cls(
            adapter_dir=Path(data["adapter_dir"]),
            losses=[(int(step), float(loss)) for step, loss in data["losses"]],
            train_tokens=int(data["train_tokens"]),
            seconds=float(data["seconds"]),
            tokens_per_s=float(data["tokens_per_s"]),
            peak_memory_mb=float(data["peak_memory_mb"]),
            loss_plot=Path(data["loss_plot"]) if data["loss_plot"] else None,
            training=dict(data["training"]),
        )


def check_vllm_compatible(adapter_dir: Path, max_rank: int) -> None:
    """Raise AdapterIncompatible unless vLLM (``--enable-lora --max-lora-rank max_rank``) can load the
    adapter in ``adapter_dir``."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise AdapterIncompatible(f"{config_path} is missing: vLLM needs a peft adapter directory")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterIncompatible(f"{config_path} is not valid JSON: {exc}") from exc
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; vLLM loads only LORA adapters")
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save is {config['modules_to_save']!r}; vLLM loads only the LoRA matrices, "
            "so train without modules_to_save"
        )
    if config.get("use_dora"):
        problems.append("use_dora is true; vLLM does not support DoRA, train with use_dora=False")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r}; vLLM needs bias='none'")
    rank = config.get("r")
    if not isinstance(rank, int) or rank > max_rank:
        problems.append(
            f"rank r={rank!r} is above the server's --max-lora-rank {max_rank}; "
            "train with a smaller rank or raise --max-lora-rank"
        )
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        problems.append(f"{adapter_dir / 'adapter_model.safetensors'} is missing; save with safetensors")
    if problems:
        raise AdapterIncompatible(f"adapter {adapter_dir} cannot be loaded by vLLM: " + "; ".join(problems))


def finetune(
    base_model: str | Path,
    examples: Sequence[Chat],
    out_dir: Path,
    config: FinetuneConfig = DEFAULTS,
    *,
    show_progress: bool = True,
) -> FinetuneResult:
    """LoRA on ``base_model`` with the chat examples, loss on the answer tokens only; saves the adapter
    (adapter_config.json + adapter_model.safetensors, vLLM-loadable) and its training record in
    ``out_dir``; the registry checks it against the server before loading. Examples longer than the
    sequence length are left out and counted in the record. Under ``accelerate launch`` every process
    calls it; the main one saves."""
    import torch
    from accelerate import PartialState  # type: ignore[import-untyped]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    if not examples:
        raise ValueError("no training examples: the curriculum is empty")
    config = config.for_serving(None)
    # First, so that under `accelerate launch` this process is bound to its own GPU before anything
    # touches CUDA (a query on the default device would put a context on GPU 0 from every process).
    process = PartialState()
    bf16 = _use_bf16(config)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    chats = chat_dataset(examples)
    with _no_library_progress_bars():
        tokens = tokenize_chats(chats, tokenizer)
    keep = fitting(tokens, _max_length(config))
    with _no_library_progress_bars():
        # The base weights are frozen: bf16 when training in bf16 (half the memory), else fp32. The
        # LoRA matrices are fp32 either way (peft's autocast_adapter_dtype). On a GPU each process
        # loads straight onto its own device rather than every process into host memory first.
        model = AutoModelForCausalLM.from_pretrained(
            base_model,
            dtype=torch.bfloat16 if bf16 else torch.float32,
            device_map={"": process.device} if process.device.type == "cuda" else None,
        )
    trainer = build_trainer(
        model, tokenizer, tokens.select(keep), Path(out_dir), config, show_progress=show_progress
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    output = trainer.train()
    record = training_record(config, chats.select(keep), too_long=len(chats) - len(keep))
    return save_adapter(trainer, Path(out_dir), started, float(output.metrics["train_runtime"]), record)


def _max_length(config: FinetuneConfig) -> int:
    return config.max_seq_length or SERVED_CONTEXT


def fitting(tokens: Dataset, max_length: int) -> list[int]:
    """The rows of ``tokenize_chats`` that fit ``max_length`` tokens whole, so that the trainer never
    cuts one: a cut answer would teach the student to stop mid-sentence, and a conversation over the
    served context is one vLLM refuses anyway. The caller counts the others."""
    keep = [index for index, ids in enumerate(tokens["input_ids"]) if len(ids) <= max_length]
    if not keep:
        raise ValueError(
            f"all {len(tokens)} training examples are longer than {max_length} tokens, the sequence "
            "length (the served context unless max_seq_length says otherwise)"
        )
    return keep


def training_record(config: FinetuneConfig, dataset: Dataset, too_long: int) -> dict[str, Any]:
    """What a model version was trained with, to compare versions and reproduce one: the settings as
    applied (automatic ones resolved), the ML libraries' versions, and a hash of the chats trained on
    (order-independent: the trainer shuffles them anyway)."""
    applied = config.model_copy(
        update={"bf16": _use_bf16(config), "gradient_checkpointing": _use_checkpointing(config)}
    )
    digests = sorted(
        hashlib.sha256(json.dumps(row, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        for row in dataset
    )
    return {
        "config": applied.model_dump(),
        "libraries": {name: importlib.metadata.version(name) for name in LIBRARIES},
        "data_sha256": hashlib.sha256("\n".join(digests).encode()).hexdigest(),
        "examples": len(dataset),
        "too_long": too_long,
    }


def _use_bf16(config: FinetuneConfig) -> bool:
    import torch

    if config.bf16 is not None:
        return config.bf16
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _use_checkpointing(config: FinetuneConfig) -> bool:
    import torch

    if config.gradient_checkpointing is not None:
        return config.gradient_checkpointing
    return torch.cuda.is_available()


def chat_dataset(examples: Sequence[Chat]) -> Dataset:
    """trl's conversational prompt-completion format: the completion is the assistant's answer turn."""
    from datasets import Dataset

    rows = []
    for messages, answer in examples:
        prompt = [{"role": str(m["role"]), "content": _text(m.get("content"))} for m in messages]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    return Dataset.from_list(rows)


def tokenize_chats(dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """``chat_dataset``'s rows as token ids and a loss mask (trl turns it into labels), rendered by
    the tokenizer's chat template as vLLM renders the prompt. The loss covers the answer and the
    end-of-turn token after it (the tokenizer's eos, where vLLM stops); not the prompt, not the
    assistant header (the generation prompt), not what a template writes after the end of turn
    (ChatML's newline after ``<|im_end|>``), which the student never generates. trl's own
    prompt-completion masking trains on that newline (and before 0.24 on the header too), and only
    warns where the prompt is not a prefix of prompt and answer: this refuses it."""

    def ids(messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        encoded: Any = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
        )
        return list(encoded["input_ids"])

    def tokenize(row: dict[str, Any]) -> dict[str, list[int]]:
        prompt = ids(row["prompt"], generation_prompt=True)
        whole = ids([*row["prompt"], *row["completion"]], generation_prompt=False)
        if whole[: len(prompt)] != prompt:
            ending, instead = prompt[-3:], whole[len(prompt) - 3 : len(prompt)]
            raise ValueError(
                "the chat template renders the prompt differently once an answer follows "
                f"({tokenizer.decode(ending)!r} becomes {tokenizer.decode(instead)!r}): "
                "the student would be trained on a context vLLM never shows it"
            )
        ends = [i for i in range(len(prompt), len(whole)) if whole[i] == tokenizer.eos_token_id]
        stop = ends[-1] + 1 if ends else len(whole)  # the last: an answer may quote the token
        mask = [0] * len(prompt) + [1] * (stop - len(prompt)) + [0] * (len(whole) - stop)
        return {"input_ids": whole, "completion_mask": mask}

    return dataset.map(tokenize, remove_columns=dataset.column_names)


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    raise ValueError(f"only plain-text message content can be trained on, not {content!r}")


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    out_dir: Path,
    config: FinetuneConfig,
    *,
    show_progress: bool = False,
) -> SFTTrainer:
    """The SFTTrainer that finetune() runs, with the LoRA adapter attached and the dataset tokenized
    (``tokenize_chats``, unless it is already). Separate so that tests can inspect its batches and the
    GPU benchmark can pass a model built in place."""
    import torch
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template; the student must be trained as vLLM prompts it")
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        bias="none",
        use_dora=False,
        modules_to_save=None,
        task_type="CAUSAL_LM",
    )
    args = SFTConfig(
        output_dir=str(out_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # transformers 5 reads a float below 1 as a ratio of all steps
        weight_decay=config.weight_decay,
        max_length=_max_length(config),  # fitting() has left out longer rows: nothing is cut
        packing=config.packing,
        completion_only_loss=True,  # explicit: the loss must never cover the prompt
        bf16=_use_bf16(config),
        fp16=False,
        seed=config.seed,
        data_seed=config.seed,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        eval_strategy="no",
        save_strategy="no",  # only the final adapter is kept, by save_adapter
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **_checkpointing(SFTConfig, _use_checkpointing(config)),
        **_by_length(SFTConfig),
    )
    with _no_library_progress_bars(), warnings.catch_warnings():
        if "input_ids" not in dataset.column_names:
            dataset = tokenize_chats(dataset, tokenizer)
        # peft reads an attribute transformers 5 renamed, on every model it wraps: nothing to act on
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
        trainer = _answer_only(SFTTrainer)(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[_rich_progress()] if show_progress else [],
        )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm makes Trainer print every log dict instead
    return trainer


def _answer_only(trainer_class: type[SFTTrainer]) -> type[SFTTrainer]:
    """``trainer_class`` with a lean loss: the LM head runs only where a label is trained on, and no
    per-step entropy or token accuracy is computed. trl's loss projects every position through the
    head on a CPU and adds those metrics, which made it 0.55-0.67x plain ``Trainer`` + peft
    (bench/bench_finetune.py); the loss itself is the same, answer tokens and end of turn, summed and
    divided by the batch's trained tokens as ``Trainer`` divides it."""
    import torch
    from torch.nn import functional

    class AnswerOnlyTrainer(trainer_class):  # type: ignore[valid-type,misc]
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if return_outputs:  # evaluation asks for the logits: trl's full computation
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            targets = labels[:, 1:]  # the token each position predicts
            # The positions (across the batch) that predict a trained token: logits for those only.
            keep = (targets != -100).any(dim=0).nonzero().squeeze(-1)
            passed = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            logits = model(**passed, use_cache=False, logits_to_keep=keep).logits
            loss = functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                targets[:, keep].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            trained = (targets != -100).sum() if num_items_in_batch is None else num_items_in_batch
            loss = loss / torch.as_tensor(trained, device=loss.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer: DDP averages the gradients
            return loss

    return AnswerOnlyTrainer


@contextlib.contextmanager
def _no_library_progress_bars() -> Iterator[None]:
    """Silence the tqdm bars of loading weights and tokenizing: finetune() shows its own, or none."""
    import datasets
    from transformers.utils import logging

    datasets_bars, transformers_bars = datasets.is_progress_bar_enabled(), logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _checkpointing(config_class: type, enabled: bool) -> dict[str, Any]:
    """Activation (gradient) checkpointing as ``_use_checkpointing`` decided, never SFTConfig's own
    default; transformers 5 renamed the setting (the old name still works, with a warning every run)."""
    return {
        "activation_checkpointing"
        if "activation_checkpointing" in _field_names(config_class)
        else "gradient_checkpointing": enabled
    }


def _field_names(config_class: type) -> set[str]:
    """The settings a trainer's config class has: transformers renames some between versions."""
    return {field.name for field in dataclasses.fields(config_class)}


def _by_length(config_class: type) -> dict[str, Any]:
    """Batches of examples of about the same length (shuffled in groups), so that little of a batch is
    padding; transformers 5 renamed the setting."""
    if "train_sampling_strategy" in _field_names(config_class):
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def save_adapter(
    trainer: SFTTrainer,
    out_dir: Path,
    started: float,
    train_seconds: float,
    training: Mapping[str, Any] | None = None,
) -> FinetuneResult:
    """Save the trained adapter and its training record (main process only), plot the losses, and
    sum up the run."""
    import torch

    state = trainer.state
    losses = [(int(log["step"]), float(log["loss"])) for log in state.log_history if "loss" in log]
    tokens = int(state.num_input_tokens_seen)
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    )
    accelerator = trainer.accelerator
    plot = out_dir / LOSS_PLOT if losses else None
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        # save_embedding_layers=False: vLLM loads LoRA matrices only, never full embeddings
        accelerator.unwrap_model(trainer.model).save_pretrained(out_dir, save_embedding_layers=False)
        (out_dir / TRAINING_FILE).write_text(json.dumps(training or {}, indent=2))
        if plot:
            _plot_losses(losses, plot)
    accelerator.wait_for_everyone()
    return FinetuneResult(
        adapter_dir=out_dir,
        losses=losses,
        train_tokens=tokens,
        seconds=time.perf_counter() - started,
        tokens_per_s=tokens / train_seconds if train_seconds > 0 else 0.0,
        peak_memory_mb=peak_mb,
        loss_plot=plot,
        training=dict(training or {}),
    )


def _rich_progress() -> TrainerCallback:
    """A rich progress bar over the optimizer steps, with the last loss, on the main process only."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Progress | None = None
            self.task: Any = None

        # The hooks keep TrainerCallback's signatures; each reads only what it needs.
        def on_train_begin(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            del args, control, kwargs
            if state.is_world_process_zero:
                self.progress = Progress(
                    TextColumn("fine-tuning"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"),
                    TimeRemainingColumn(),
                )
                self.task = self.progress.add_task("fine-tuning", total=state.max_steps, loss="-")
                self.progress.start()

        def on_step_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            del args, control, kwargs
            if self.progress:
                self.progress.update(self.task, completed=state.global_step)

        def on_log(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            logs: dict[str, float] | None = None,
            **kwargs: Any,
        ) -> None:
            del args, state, control, kwargs
            if self.progress and logs and "loss" in logs:
                self.progress.update(self.task, loss=f"{logs['loss']:.4f}")

        def on_train_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            del args, state, control, kwargs
            if self.progress:
                self.progress.stop()
                self.progress = None

    return RichProgress()


def _plot_losses(losses: list[tuple[int, float]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(figure)  # the Agg canvas: no display and no pyplot global state
    axes = figure.add_subplot()
    axes.plot(
        [step for step, _ in losses], [loss for _, loss in losses], marker="." if len(losses) < 50 else ""
    )
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss (answer tokens)")
    axes.set_title("LoRA fine-tuning")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


# --- jobs: the same code under `python -m` or `accelerate launch -m` --------------------------------


def write_job(
    path: Path,
    base_model: str | Path,
    examples: Sequence[Chat],
    out_dir: Path,
    config: FinetuneConfig = DEFAULTS,
) -> Path:
    """Write JOB.json (and the examples as JSONL beside it) for ``python -m flywheel.finetune JOB.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    examples_path = path.with_suffix(".examples.jsonl")
    with examples_path.open("w") as file:
        for messages, answer in examples:
            file.write(json.dumps({"messages": messages, "answer": answer}) + "\n")
    job = {
        "base_model": str(base_model),
        "examples": str(examples_path.resolve()),
        "out_dir": str(Path(out_dir).resolve()),
        "config": config.model_dump(),
    }
    path.write_text(json.dumps(job, indent=2))
    return path


def read_result(out_dir: Path) -> FinetuneResult:
    """The FinetuneResult a job wrote to ``out_dir/result.json``."""
    path = Path(out_dir) / RESULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the fine-tuning job did not finish (see its output)")
    return FinetuneResult.from_json(json.loads(path.read_text()))


def run_job(job_path: Path, *, show_progress: bool = True) -> FinetuneResult:
    job = json.loads(Path(job_path).read_text())
    missing = {"base_model", "examples", "out_dir"} - set(job)
    if missing:
        raise ValueError(f"{job_path} lacks {', '.join(sorted(missing))}")
    examples: list[Chat] = []
    with Path(job["examples"]).open() as file:
        for line in file:
            if line.strip():
                row = json.loads(line)
                examples.append((row["messages"], row["answer"]))
    config = FinetuneConfig.from_overrides(job.get("config") or {})
    out_dir = Path(job["out_dir"])
    result = finetune(job["base_model"], examples, out_dir, config, show_progress=show_progress)
    from accelerate import PartialState

    if PartialState().is_main_process:
        (out_dir / RESULT_FILE).write_text(json.dumps(result.to_json(), indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m flywheel.finetune JOB.json  (on several GPUs: accelerate launch -m ...)"
    if args in (["-h"], ["--help"]):
        sys.stdout.write(usage + "\n")
        return 0
    if len(args) != 1:
        sys.stderr.write(usage + "\n")
        return 2
    result = run_job(Path(args[0]), show_progress=sys.stderr.isatty())
    sys.stdout.write(
        f"adapter saved in {result.adapter_dir}: {result.train_tokens} tokens in {result.seconds:.1f} s\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
