"""The image's install steps, run for real without a container engine (none runs on the machines this
project is developed and tested on): the `build` stage of deploy/Dockerfile, copied from the context
its .dockerignore lets through, executed in a scratch root with a fresh virtual environment, then the
`runtime` stage's command and HEALTHCHECK against that environment. The Dockerfile cannot drift from
pyproject.toml (a dependency missing from the install, a package file not copied) without failing here.

The stage's absolute paths (``/src``, ``$VIRTUAL_ENV``) are placed under the scratch root; ``python``
is this machine's Python 3.11, as in the ``python:3.11-slim`` base image; pip installs from the
configured index, as in a build."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.deploy.dockerfile import (
    DockerIgnore,
    Stage,
    copy_sources,
    exec_form,
    healthcheck_command,
    parse,
    run_command,
)
from tests.support.processes import wait_for
from tests.support.vllm_server import ROOT, free_port

INSTALL_TIMEOUT_S = 900  # a cold pip cache on a loaded two-core machine


class ScratchImage:
    """A root folder standing in for the image's filesystem, and the environment its stages set."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env: dict[str, str] = {}
        self.workdir = root

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def set_env(self, stage: Stage) -> None:
        """ENV values with their absolute paths moved under the root; ``$NAME`` expands to the value
        set so far, else this machine's (``$PATH``)."""
        for name, value in stage.env().items():
            parts = [str(self.path(part)) if part.startswith("/") else part for part in value.split(":")]
            known = {**os.environ, **self.env}

            def expand(match: re.Match[str], known: dict[str, str] = known) -> str:
                return known.get(match[1], "")

            self.env[name] = re.sub(r"\$\{?(\w+)\}?", expand, ":".join(parts))

    def process_env(self, shims: Path) -> dict[str, str]:
        """This machine's environment (pip's index settings) without the test's own virtual
        environment or settings, plus the stages' ENV; ``python`` found first in ``shims``."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("REVIEWBOT_") and name not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        }
        outside_venv = [p for p in env.get("PATH", "").split(":") if not p.startswith(sys.prefix)]
        env["PATH"] = ":".join([str(shims), *outside_venv])
        env.update(self.env)
        return env


def run_stage(image: ScratchImage, stage: Stage, context: Path, shims: Path) -> None:
    for instruction in stage.instructions:
        if instruction.keyword == "ENV":
            image.set_env(stage)
        elif instruction.keyword == "WORKDIR":
            image.workdir = image.path(instruction.arguments)
            image.workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            sources, destination, flags = copy_sources(instruction)
            assert not flags, f"line {instruction.line}: COPY {flags} in the build stage"
            target = image.path(destination) if destination.startswith("/") else image.workdir / destination
            for source in sources:
                origin = context / source
                assert origin.exists(), f"line {instruction.line}: {source} is not in the build context"
                if origin.is_dir():  # its contents, as the builder copies a folder
                    shutil.copytree(origin, target, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif instruction.keyword == "RUN":
            done = subprocess.run(
                ["/bin/sh", "-c", run_command(instruction)],
                cwd=image.workdir,
                env=image.process_env(shims),
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
            output = done.stdout[-3000:] + done.stderr[-3000:]
            assert done.returncode == 0, f"line {instruction.line}: RUN {instruction.arguments}\n{output}"
        else:
            pytest.fail(f"line {instruction.line}: {instruction.keyword} is not understood by this test")


def build_context(tmp_path: Path, stage: Stage) -> Path:
    """What the builder sends for this stage's COPY sources: the repository less .dockerignore's
    exclusions."""
    ignore = DockerIgnore(ROOT / ".dockerignore")
    context = tmp_path / "context"
    for instruction in stage.all("COPY"):
        for source in copy_sources(instruction)[0]:
            origin = ROOT / source
            files = [origin] if origin.is_file() else [p for p in origin.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if not ignore.excluded(relative):
                    (context / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, context / relative)
    return context


def keep_only_copied(image: ScratchImage, runtime: Stage) -> None:
    """The runtime stage starts afresh and takes only what it copies ``--from=build``: the rest of the
    build stage's root (its sources, pip's leftovers) goes, so nothing can still depend on it."""
    kept = set()
    for instruction in runtime.all("COPY"):
        sources, destination, flags = copy_sources(instruction)
        assert flags.get("from") == "build", f"line {instruction.line}: not a copy from the build stage"
        assert sources == [destination], "the virtual environment must keep its path (its scripts name it)"
        kept.add(image.path(destination))
    folders = [image.root]
    while folders:
        for entry in list(folders.pop().iterdir()):
            if entry in kept:
                continue
            if any(entry in k.parents for k in kept):
                folders.append(entry)
            elif entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def missing_package_files(python: Path, env: dict[str, str]) -> list[str]:
    """The packages' modules and package data (pyproject's globs) in this checkout that the installed
    environment lacks: a folder not copied into the image, a pattern missing from package-data."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    where = subprocess.run(
        # -I: not the working directory's nor PYTHONPATH's packages, the environment's own
        [python, "-I", "-c", "import bot, pathlib; print(pathlib.Path(bot.__file__).parent.parent)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    site = Path(where.stdout.strip())
    missing = []
    for package in ("bot", "flywheel", "prompts"):
        expected = [p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts]
        for pattern in setuptools["package-data"].get(package, []):
            expected += (ROOT / package).glob(pattern)
        missing += [str(p.relative_to(ROOT)) for p in expected if not (site / p.relative_to(ROOT)).is_file()]
    return missing


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_dockerfile_install_steps_give_a_working_service(tmp_path: Path) -> None:
    stages = parse(ROOT / "deploy" / "Dockerfile")
    build, runtime = stages["build"], stages["runtime"]
    image = ScratchImage(tmp_path / "root")
    shims = tmp_path / "shims"
    shims.mkdir()
    # The base image's interpreter: this machine's Python, not the test's virtual environment.
    (shims / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))

    run_stage(image, build, build_context(tmp_path, build), shims)
    keep_only_copied(image, runtime)
    assert not image.path("/src").exists()

    image.set_env(runtime)
    env = image.process_env(shims)
    Path(env["REVIEWBOT_HOME"]).mkdir(parents=True)  # the runtime stage makes it, owned by its user
    entrypoint = exec_form(runtime.all("ENTRYPOINT")[-1].arguments)
    command = shutil.which(entrypoint[0], path=env["PATH"])
    assert command is not None
    assert Path(command).is_relative_to(image.root), f"the entrypoint is {command}, not the image's"

    version = subprocess.run([command, "--version"], env=env, capture_output=True, text=True, timeout=60)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"reviewbot {project['version']}"
    # The trainer's commands are there (entry points), without the ML stack in this image.
    assert "flywheel" in subprocess.run([command, "--help"], env=env, capture_output=True, text=True).stdout
    assert not missing_package_files(Path(command).parent / "python", env)

    migrate = subprocess.run([command, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    assert "schema upgraded from empty" in migrate.stdout

    # The image's command, on a free port instead of 8080 (so is its HEALTHCHECK's URL).
    port = str(free_port())
    arguments = [port if word == "8080" else word for word in exec_form(runtime.all("CMD")[-1].arguments)]
    healthcheck = [word.replace(":8080/", f":{port}/") for word in healthcheck_command(runtime)]
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [command, *entrypoint[1:], *arguments], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:

        def healthy() -> bool:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("reviewbot serve from the image's environment", healthy, 120, interval_s=0.5)
        check = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    down = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode != 0, "the HEALTHCHECK passes with the service stopped"
