"""The deployment files as the real tools see them: Compose's resolved configuration (Debian's
docker-compose) and each Kubernetes overlay rendered by ``kubectl kustomize``. Without those tools the
tests that need them are skipped, except in CI (``CI=true``), where they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.vllm_server import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("gpu", "cpu-demo")
INSTALL = "apt-get install docker-compose kubernetes-client; bash deploy/setup.sh dev (kubernetes-validate)"


def require(tool: str) -> str:
    found = shutil.which(tool) or (
        str(ROOT / ".venv/bin" / tool) if (ROOT / ".venv/bin" / tool).exists() else None
    )
    if found is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI checks the deployment files and {tool} is missing: {INSTALL}")
        pytest.skip(f"{tool} is missing: {INSTALL}")
    return found


def dummy_env(path: Path, drop: tuple[str, ...] = ()) -> Path:
    """deploy/env.example's uncommented variables, the empty ones set to "dummy" (as
    deploy/check-deploy.sh does), less ``drop``."""
    lines = []
    for line in (DEPLOY / "env.example").read_text().splitlines():
        name, equals, value = line.partition("=")
        if equals and name.isupper() and not name.startswith("#") and name not in drop:
            lines.append(f"{name}={value or 'dummy'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def compose(env_file: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` of ``files`` (under deploy/) with ``env_file``."""
    arguments = [require("docker-compose"), "--env-file", str(env_file)]
    for name in files:
        arguments += ["-f", str(DEPLOY / name)]
    env = {**os.environ, "DEPLOY_ENV_FILE": str(env_file)}
    return subprocess.run([*arguments, "config"], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """The resolved configuration of the given Compose files, as docker-compose merges them."""
    env_file = dummy_env(tmp_path_factory.mktemp("compose") / "dummy.env")
    cache: dict[tuple[str, ...], dict[str, Any]] = {}

    def resolved(*files: str) -> dict[str, Any]:
        if files not in cache:
            done = compose(env_file, *files)
            assert done.returncode == 0, done.stderr
            cache[files] = yaml.safe_load(done.stdout)
        return cache[files]

    return resolved


def render(copy: Path, overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [require("kubectl"), "kustomize", str(copy / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="session")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/k8s with its secrets.env made from the committed template (the real one is never
    committed, and kustomize needs one)."""
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "base" / "secrets.env").write_text((K8S / "base" / "secrets.env.example").read_text())
    return copy


@pytest.fixture(scope="session")
def rendered(k8s_copy: Path) -> dict[str, list[dict[str, Any]]]:
    """Each overlay's manifests, rendered by ``kubectl kustomize``."""
    return {overlay: render(k8s_copy, overlay) for overlay in OVERLAYS}
