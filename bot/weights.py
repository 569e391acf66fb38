"""A fingerprint of a model's base weights: what an adapter was trained on, and what vLLM serves.

A LoRA adapter is a difference from one set of base weights; loaded on others it answers nonsense
without any error. The fingerprint is a SHA-256 over the model's ``config.json`` and tokenizer files,
and, for each weights file, its name, size, its safetensors header (every tensor's name, dtype,
shape and offset) and its first and last MiB of data. Hashing every byte would be exact but reads
16 GB for Llama 3 8B on every check (minutes on network storage); this reads a few MB, and still
tells apart another model, another precision or conversion (header, sizes) and another fine-tune of
the same architecture (its values differ from the first tensor on).
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

MIB = 1 << 20
DESCRIBING_FILES = ("config.json", "tokenizer.json", "tokenizer.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def local_folder(location: str) -> Path | None:
    """The folder holding the weights at ``location``: a local folder, or a hub id's snapshot in the
    local Hugging Face cache; None when neither is here (the weights live on another host)."""
    if not location:
        return None
    path = Path(location).expanduser()
    if path.is_dir():
        return path
    if location.count("/") != 1 or location.startswith(("/", ".")):
        return None
    cache = os.environ.get("HF_HUB_CACHE") or str(
        Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    repo = Path(cache) / f"models--{location.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    snapshot = repo / "snapshots" / ref.read_text().strip()
    return snapshot if snapshot.is_dir() else None


def fingerprint(folder: Path) -> str:
    """``sha256:HEX`` of the weights in ``folder`` (see the module's docstring); ``ValueError`` when
    it holds no weights file."""
    digest = hashlib.sha256()
    for name in DESCRIBING_FILES:
        if (folder / name).is_file():
            digest.update(f"{name}\0".encode())
            digest.update((folder / name).read_bytes())
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise ValueError(f"{folder} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    for path in weights:
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as file:
            start = 0
            if path.suffix == ".safetensors" and size >= 8:
                (header_size,) = struct.unpack("<Q", file.read(8))
                digest.update(file.read(header_size))
                start = 8 + header_size
            file.seek(start)
            digest.update(file.read(MIB))
            if size - start > 2 * MIB:
                file.seek(size - MIB)
            digest.update(file.read(MIB))
    return f"sha256:{digest.hexdigest()}"


def fingerprint_of(location: str) -> str | None:
    """The fingerprint of the weights at ``location`` (a folder or a hub id), or None when they are
    not readable here."""
    folder = local_folder(location)
    if folder is None:
        return None
    try:
        return fingerprint(folder)
    except (OSError, ValueError):
        return None
