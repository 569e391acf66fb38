"""The base weights' fingerprint, and the check before an adapter is loaded into vLLM: a mismatch
refuses, naming both fingerprints; a load that finds the adapter there already succeeds."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bot.llm import LLMClient
from bot.models import ModelStatus, ModelVersion, Task
from bot.serving import BASE_FINGERPRINT, AdapterMismatch, load_adapters
from bot.weights import MIB, fingerprint, fingerprint_of, local_folder
from tests.support.scripted_server import Reply, Script, scripted_server


def weights(folder: Path, seed: int = 0, dtype: torch.dtype = torch.float32, rows: int = 4) -> Path:
    """A model folder: config, tokenizer and one safetensors shard of ``rows`` x 256K values."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 128}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    generator = torch.Generator().manual_seed(seed)
    tensors = {"embed": torch.randn(rows, 256 * 1024, generator=generator).to(dtype), "norm": torch.ones(8)}
    save_file(tensors, folder / "model.safetensors")
    return folder


def test_the_same_weights_at_two_paths_have_one_fingerprint(tmp_path: Path) -> None:
    original = weights(tmp_path / "a")
    copy = Path(shutil.copytree(original, tmp_path / "b"))
    assert (original / "model.safetensors").stat().st_size > 3 * MIB  # the head and tail are read apart
    assert fingerprint(original) == fingerprint(copy)
    assert len(fingerprint(original)) == len("sha256:") + 64


def test_other_values_precision_or_vocabulary_change_the_fingerprint(tmp_path: Path) -> None:
    base = fingerprint(weights(tmp_path / "base"))
    assert fingerprint(weights(tmp_path / "fine-tuned", seed=1)) != base  # same shapes, other values
    assert fingerprint(weights(tmp_path / "bf16", dtype=torch.bfloat16)) != base  # another header
    retokenized = Path(shutil.copytree(tmp_path / "base", tmp_path / "vocab"))
    (retokenized / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"b": 0}}}))
    assert fingerprint(retokenized) != base
    # The last MiB is read too: a change there (the output layer of a real model) shows.
    tail = Path(shutil.copytree(tmp_path / "base", tmp_path / "tail"))
    with (tail / "model.safetensors").open("r+b") as file:
        file.seek(-4, 2)
        file.write(b"\x01\x02\x03\x04")
    assert fingerprint(tail) != base


def test_a_folder_without_weights_or_not_here_has_no_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no weights file"):
        fingerprint(tmp_path / "empty")
    assert fingerprint_of(str(tmp_path / "empty")) is None
    assert fingerprint_of(str(tmp_path / "missing")) is None
    assert fingerprint_of("meta-llama/Meta-Llama-3-8B-Instruct") is None  # not in this cache


def test_a_hub_id_is_found_in_the_local_hugging_face_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "hub" / "models--org--model"
    weights(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert local_folder("org/model") == repo / "snapshots" / "abc123"
    assert fingerprint_of("org/model") == fingerprint(repo / "snapshots" / "abc123")
    assert local_folder("org/other") is None


def version(name: str, trained_on: str | None) -> ModelVersion:
    metrics = {BASE_FINGERPRINT: trained_on} if trained_on else {}
    return ModelVersion(task=Task.SEVERITY, adapter_name=name, path=f"/adapters/{name}", base_model="w",
                        status=ModelStatus.ACTIVE, metrics=metrics)  # fmt: skip


def loads(script: Script) -> list[str]:
    return [str(r["lora_name"]) for r in script.requests if str(r["path"]).endswith("/load_lora_adapter")]


def test_an_adapter_trained_on_other_weights_is_refused_before_loading(tmp_path: Path) -> None:
    served = weights(tmp_path / "served")
    other = fingerprint(weights(tmp_path / "other", seed=1))
    script = Script([], default=Reply(200, {}), root=str(served))

    async def load(versions: list[ModelVersion]) -> list[str]:
        async with LLMClient(url, "k", role="student", max_retries=0) as llm:
            return await load_adapters(llm, versions)

    with scripted_server(script) as url:
        with pytest.raises(AdapterMismatch) as refused:
            asyncio.run(load([version("severity-v2", other)]))
        assert loads(script) == []  # refused before vLLM was asked
        message = str(refused.value)
        assert f"'severity-v2' was trained on base weights {other}" in message
        assert f"serves {served} with base weights {fingerprint(served)}" in message
        # The same weights (or none recorded: a version registered before fingerprints) load.
        names = asyncio.run(load([version("severity-v3", fingerprint(served)), version("severity-v1", None)]))
        assert names == loads(script) == ["severity-v3", "severity-v1"]


def test_a_load_that_finds_the_adapter_already_there_succeeds() -> None:
    """Behind a balancer the listing comes from one replica and the load may reach another that has
    it (its resolver loaded it); two reviews may also load one adapter at once."""
    message = (
        "The lora adapter 'severity-v1' has already been loaded. "
        "If you want to load the adapter in place, set 'load_inplace' to True."
    )
    already = Reply(400, {"object": "error", "message": message, "type": "BadRequestError", "code": 400})
    script = Script([already], default=Reply(200, {}), adapters=("severity-v0",))

    async def load(versions: list[ModelVersion]) -> list[str]:
        async with LLMClient(url, "k", role="student", max_retries=0) as llm:
            return await load_adapters(llm, versions)

    with scripted_server(script) as url:
        assert asyncio.run(load([version("severity-v1", None)])) == ["severity-v1"]
        assert asyncio.run(load([version("severity-v0", None)])) == []  # listed: not loaded again
    assert loads(script) == ["severity-v1"]
