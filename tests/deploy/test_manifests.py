"""The deployment files: deploy/check-deploy.sh passes (and fails on a broken file), and what matters
in them holds — non-root images with no secret inside, a health check, migrations as their own step,
the adapters folder at one path in the trainer and in vLLM, vLLM's flags as deploy/vllm-serve.sh's,
PostgreSQL, Redis and vLLM kept internal, privileges dropped, and only REVIEWBOT_* names that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ENV_PREFIX, Settings
from tests.deploy.conftest import DEPLOY, K8S, compose, dummy_env, require
from tests.deploy.dockerfile import DockerIgnore, Stage, copy_sources, healthcheck_command, parse
from tests.support.vllm_server import ROOT

ADAPTERS = "/var/lib/reviewbot/flywheel/adapters"
GPU = "nvidia.com/gpu"
SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY")

# --- deploy/check-deploy.sh


def check_deploy(root: Path) -> subprocess.CompletedProcess[str]:
    for tool in ("docker-compose", "kubectl"):
        require(tool)
    env = {**os.environ, "KUBERNETES_VALIDATE": require("kubernetes-validate")}
    return subprocess.run(
        ["bash", str(root / "deploy" / "check-deploy.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_check_deploy_passes() -> None:
    done = check_deploy(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deploy/compose.yaml + deploy/compose.cpu.yaml: valid" in done.stdout
    assert re.search(r"deploy/k8s/overlays/gpu: \d+ resources, valid", done.stdout)
    assert re.search(r"deploy/k8s/overlays/cpu-demo: \d+ resources, valid", done.stdout)


@pytest.mark.parametrize(
    ("path", "before", "after", "message"),
    [
        ("compose.yaml", "condition: service_completed_successfully", "condition: completed", "condition"),
        ("k8s/base/api.yaml", "readinessProbe:", "readinesProbe:", "readinesProbe"),
    ],
)
def test_check_deploy_fails_on_a_broken_file(
    tmp_path: Path, path: str, before: str, after: str, message: str
) -> None:
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns(".env", "secrets.env"))
    broken = tmp_path / "deploy" / path
    assert before in broken.read_text()
    broken.write_text(broken.read_text().replace(before, after, 1))
    done = check_deploy(tmp_path)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
    assert "all checks passed" not in done.stdout


# --- the image


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse(DEPLOY / "Dockerfile")


def user_of(stages: dict[str, Stage], name: str) -> str | None:
    stage = stages[name]
    return stage.user() or (user_of(stages, stage.base) if stage.base in stages else None)


@pytest.mark.parametrize("stage", ["runtime", "train", "train-demo", "cpu-student"])
def test_images_run_as_a_non_root_user(stages: dict[str, Stage], stage: str) -> None:
    user = user_of(stages, stage)
    assert user is not None, f"{stage} runs as root"
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric uid: Kubernetes' runAsNonRoot can check it"
    assert int(uid) != 0


def test_the_api_image_checks_its_health_on_healthz(stages: dict[str, Stage]) -> None:
    assert any("/healthz" in word for word in healthcheck_command(stages["runtime"]))


def test_no_secret_is_baked_into_an_image(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        for name in stage.env():
            assert not SECRET_WORDS.search(name), f"{stage.name} sets {name}"
    arguments = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("ARG")]
    assert not [line for line in arguments if SECRET_WORDS.search(line)]
    ignore = DockerIgnore(ROOT / ".dockerignore")
    for secret in (".env", "deploy/.env", "deploy/k8s/base/secrets.env", "reviewbot.db.key", ".git/config"):
        assert ignore.excluded(secret), f"{secret} would be sent to the builder"


def test_every_copied_file_is_in_the_build_context(stages: dict[str, Stage]) -> None:
    ignore = DockerIgnore(ROOT / ".dockerignore")
    for stage in stages.values():
        for instruction in stage.all("COPY"):
            sources, _, flags = copy_sources(instruction)
            if "from" in flags:
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"line {instruction.line}: {source} does not exist"
                assert not ignore.excluded(source), (
                    f"line {instruction.line}: .dockerignore excludes {source}"
                )


def test_the_trainer_keeps_the_base_images_cuda_torch(stages: dict[str, Stage]) -> None:
    (install,) = [i.arguments for i in stages["train"].all("RUN") if "[train]" in i.arguments]
    assert "--system-site-packages" in install
    assert "--constraint /tmp/keep-torch.txt" in install
    train_base = re.search(
        r"^ARG TRAIN_BASE=\S+:(\d+\.\d+\.\d+)-cuda", (DEPLOY / "Dockerfile").read_text(), re.M
    )
    pinned = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert train_base is not None
    assert pinned is not None
    assert train_base[1] == pinned[1], "the CUDA base's torch must satisfy the train extra's pin"


# --- Compose


@pytest.fixture(scope="module")
def gpu_compose(compose_config: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    services: dict[str, Any] = compose_config("compose.yaml")["services"]
    return services


@pytest.fixture(scope="module")
def cpu_compose(compose_config: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    services: dict[str, Any] = compose_config("compose.yaml", "compose.cpu.yaml")["services"]
    return services


def mounts(service: dict[str, Any], volume: str) -> list[tuple[str, bool]]:
    """(target, read-only) of each mount of ``volume``."""
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            found += [(target, mode == ["ro"])] if source == volume else []
        elif entry.get("source") == volume:
            found.append((entry["target"], bool(entry.get("read_only"))))
    return found


def gpu_reserved(service: dict[str, Any]) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any("gpu" in device.get("capabilities", []) for device in devices)


@pytest.mark.parametrize(("trainer", "student"), [("trainer", "vllm"), ("cpu-trainer", "cpu-student")])
def test_compose_adapters_are_at_one_path_for_trainer_and_vllm(
    gpu_compose: dict[str, Any], cpu_compose: dict[str, Any], trainer: str, student: str
) -> None:
    services = gpu_compose if trainer == "trainer" else cpu_compose
    flywheel_dir = services[trainer]["environment"]["REVIEWBOT_FLYWHEEL_DIR"]
    assert mounts(services[trainer], "flywheel") == [(flywheel_dir, False)]
    assert mounts(services[student], "flywheel") == [(flywheel_dir, True)]
    assert services[student]["environment"]["VLLM_LORA_RESOLVER_CACHE_DIR"] == f"{flywheel_dir}/adapters"
    assert services[student]["environment"]["VLLM_PLUGINS"] == "lora_filesystem_resolver"
    assert services[student]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert f"{flywheel_dir}/adapters" == ADAPTERS


def test_compose_migrates_first_as_a_one_shot(gpu_compose: dict[str, Any]) -> None:
    assert gpu_compose["migrate"]["command"] == ["db", "upgrade"]
    assert gpu_compose["migrate"]["restart"] == "no"
    for name in ("api", "worker", "trainer"):
        condition = gpu_compose[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


def test_compose_keeps_the_data_services_and_vllm_internal(
    compose_config: Callable[..., dict[str, Any]], gpu_compose: dict[str, Any]
) -> None:
    networks = compose_config("compose.yaml")["networks"]
    assert networks["data"]["internal"] is True
    for name in ("postgres", "redis"):
        assert list(gpu_compose[name]["networks"]) == ["data"], name
    for name in ("postgres", "redis", "vllm"):
        assert "ports" not in gpu_compose[name], f"{name} is published"
    assert "--requirepass" in " ".join(gpu_compose["redis"]["command"])
    for name in ("api", "worker", "trainer", "migrate"):
        assert "data" in gpu_compose[name]["networks"], name


def test_compose_reserves_gpus_only_without_the_cpu_override(
    gpu_compose: dict[str, Any], cpu_compose: dict[str, Any]
) -> None:
    assert gpu_reserved(gpu_compose["vllm"])
    assert gpu_reserved(gpu_compose["trainer"])
    started = {name: s for name, s in cpu_compose.items() if "gpu" not in s.get("profiles", [])}
    assert set(started) >= {"api", "worker", "migrate", "postgres", "redis", "cpu-student", "cpu-trainer"}
    assert not [name for name, service in started.items() if gpu_reserved(service)]
    assert "vllm" in cpu_compose["cpu-student"]["networks"]["default"]["aliases"]


def test_compose_health_checks_and_scaling(gpu_compose: dict[str, Any]) -> None:
    assert "/healthz" in " ".join(gpu_compose["api"]["healthcheck"]["test"])
    assert "/v1/models" in " ".join(gpu_compose["vllm"]["healthcheck"]["test"])
    for name in ("postgres", "redis"):
        assert gpu_compose[name]["healthcheck"]["test"], name
    assert "container_name" not in gpu_compose["worker"]  # `--scale worker=N` needs generated names
    assert "ports" not in gpu_compose["worker"]


def test_compose_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    secrets = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "REVIEWBOT_SECRET_KEY", "VLLM_API_KEY")
    done = compose(dummy_env(tmp_path / "no-secrets.env", drop=secrets), "compose.yaml")
    assert done.returncode != 0
    assert re.search(rf"set ({'|'.join(secrets)}) in deploy/.env", done.stderr), done.stderr


def test_compose_files_hold_no_secret_value() -> None:
    for name in ("compose.yaml", "compose.cpu.yaml"):
        for service in yaml.safe_load((DEPLOY / name).read_text())["services"].values():
            for key, value in (service.get("environment") or {}).items():
                if SECRET_WORDS.search(key):
                    assert re.fullmatch(r"\$\{\w+(:[?-][^}]*)?\}", str(value)), f"{name}: {key}: {value}"


def vllm_serve_defaults() -> dict[str, str]:
    """The flags deploy/vllm-serve.sh gives vLLM, with their defaults."""
    script = (DEPLOY / "vllm-serve.sh").read_text()
    flags = {
        flag: default
        for flag, default in re.findall(r'(--[a-z-]+) "\$\{[A-Z_]+:-([^}]+)\}"', script)
        if flag not in ("--host", "--port") and not default.startswith("$")  # where, and the model's name
    }
    (outputs,) = re.findall(r"--structured-outputs-config '([^']+)'", script)
    flags["--structured-outputs-config"] = outputs
    assert "--enable-lora" in script
    return flags


def flag_values(arguments: list[str]) -> dict[str, str]:
    return {word: arguments[i + 1] for i, word in enumerate(arguments[:-1]) if word.startswith("--")}


def test_compose_vllm_flags_are_vllm_serve_sh_flags(gpu_compose: dict[str, Any]) -> None:
    command = gpu_compose["vllm"]["command"]
    given = flag_values(command)
    for flag, default in vllm_serve_defaults().items():
        assert given.get(flag) == default, flag
    assert "--enable-lora" in command


# --- Kubernetes


def objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from (doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet", "Job"))


def container(workload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(workload)["containers"]
    return next(c for c in containers if name is None or c["name"] == name)


def env_value(workload: dict[str, Any], name: str) -> str:
    return str(next(e["value"] for e in container(workload)["env"] if e["name"] == name))


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    (config_map,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    data: dict[str, str] = config_map["data"]
    return data


@pytest.mark.parametrize("overlay", ["gpu", "cpu-demo"])
def test_k8s_has_every_part(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    deployments = objects(docs, "Deployment")
    assert set(deployments) == {"api", "worker", "trainer", "vllm"}
    assert deployments["trainer"]["spec"]["replicas"] == 1
    assert deployments["trainer"]["spec"]["strategy"]["type"] == "Recreate"
    assert set(objects(docs, "StatefulSet")) == {"postgres", "redis"}
    assert set(objects(docs, "Service")) >= {"api", "vllm", "postgres", "redis"}
    assert set(objects(docs, "Ingress")) == {"api"}
    (hpa,) = objects(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "worker"
    assert set(objects(docs, "PodDisruptionBudget")) == {"api", "worker", "vllm"}
    (job,) = objects(docs, "Job").values()
    assert container(job)["args"] == ["db", "upgrade"]
    (claim,) = [c for name, c in objects(docs, "PersistentVolumeClaim").items() if name == "flywheel"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert len([doc for doc in docs if doc["kind"] == "Secret"]) == 1  # from secrets.env only


@pytest.mark.parametrize("overlay", ["gpu", "cpu-demo"])
def test_k8s_probes(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    deployments = objects(rendered[overlay], "Deployment")
    api = container(deployments["api"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] == "/healthz"
    vllm = container(deployments["vllm"])
    assert "/v1/models" in " ".join(vllm["readinessProbe"]["exec"]["command"])
    assert vllm["livenessProbe"]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("overlay", ["gpu", "cpu-demo"])
def test_k8s_adapters_are_at_one_path_for_trainer_and_vllm(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    deployments = objects(docs, "Deployment")
    flywheel_dir = config(docs)["REVIEWBOT_FLYWHEEL_DIR"]

    def claim_mount(name: str) -> tuple[str, bool]:
        volumes = pod_spec(deployments[name])["volumes"]
        (volume,) = [
            v["name"] for v in volumes if v.get("persistentVolumeClaim", {}).get("claimName") == "flywheel"
        ]
        (mount,) = [m for m in container(deployments[name])["volumeMounts"] if m["name"] == volume]
        return mount["mountPath"], bool(mount.get("readOnly"))

    assert claim_mount("trainer") == (flywheel_dir, False)
    assert claim_mount("vllm") == (flywheel_dir, True)
    assert (
        env_value(deployments["vllm"], "VLLM_LORA_RESOLVER_CACHE_DIR")
        == f"{flywheel_dir}/adapters"
        == ADAPTERS
    )
    assert env_value(deployments["vllm"], "VLLM_PLUGINS") == "lora_filesystem_resolver"
    assert env_value(deployments["vllm"], "VLLM_ALLOW_RUNTIME_LORA_UPDATING") == "True"


@pytest.mark.parametrize("overlay", ["gpu", "cpu-demo"])
def test_k8s_pods_drop_their_privileges(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for workload in workloads(rendered[overlay]):
        spec, name = pod_spec(workload), workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for each in spec["containers"] + spec.get("initContainers", []):
            context = each["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert each["resources"]["requests"]["cpu"], name
            assert each["resources"]["requests"]["memory"], name
            assert each["resources"]["limits"]["memory"], name
            if name != "vllm":  # its kernel caches: see vllm.yaml
                assert context["readOnlyRootFilesystem"] is True, name


def test_k8s_gpus_only_in_the_gpu_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    gpu = objects(rendered["gpu"], "Deployment")
    for name in ("vllm", "trainer"):
        assert container(gpu[name])["resources"]["limits"][GPU] == 1, name
    assert GPU not in yaml.safe_dump_all(rendered["cpu-demo"])
    cpu_vllm = container(objects(rendered["cpu-demo"], "Deployment")["vllm"])
    assert "cpu-student" in cpu_vllm["image"]
    assert cpu_vllm["command"] == ["bash", "/app/deploy/vllm-serve.sh"]


def test_k8s_vllm_flags_are_vllm_serve_sh_flags(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    vllm = container(objects(docs, "Deployment")["vllm"])
    settings = config(docs)
    given = {
        flag: re.sub(r"\$\((\w+)\)", lambda m: settings[m[1]], value)
        for flag, value in flag_values(vllm["args"]).items()
    }
    for flag, default in vllm_serve_defaults().items():
        assert given.get(flag) == default, flag


def test_k8s_network_policies_keep_data_and_vllm_internal(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policies = objects(rendered["gpu"], "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    allowed = {"postgres": {"api", "worker", "trainer", "migrate"}, "redis": {"api", "worker", "trainer"}}
    allowed["vllm"] = {"api", "worker", "trainer"}
    for target, clients in allowed.items():
        policy = policies[target]["spec"]
        assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": target}
        (rule,) = policy["ingress"]
        (source,) = rule["from"]
        assert set(source) == {"podSelector"}, "no namespaceSelector or ipBlock: this namespace's pods only"
        (expression,) = source["podSelector"]["matchExpressions"]
        assert expression["operator"] == "In"
        assert set(expression["values"]) == clients


def test_k8s_secrets_come_only_from_an_uncommitted_file() -> None:
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not doc or doc.get("kind") != "Secret", f"{path}: a Secret in the repository"
    assert not (K8S / "base" / "secrets.env").exists() or _ignored(K8S / "base" / "secrets.env")
    example = (K8S / "base" / "secrets.env.example").read_text()
    assert not re.findall(r"^[A-Z_]+=.+$", example, re.M), "the template holds a value"


def _ignored(path: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0


# --- REVIEWBOT_* names


SETTINGS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def unknown_settings(text: str) -> set[str]:
    """The REVIEWBOT_* names in ``text`` that are not settings (``bot.config.Settings``); a prefix
    such as ``REVIEWBOT_TOKEN_*`` (project tokens' variables) is not a name."""
    return set(re.findall(r"\bREVIEWBOT_[A-Z0-9_]*[A-Z0-9]\b", text)) - SETTINGS


def deployment_files() -> list[Path]:
    files = [
        DEPLOY / "Dockerfile",
        DEPLOY / "compose.yaml",
        DEPLOY / "compose.cpu.yaml",
        DEPLOY / "env.example",
    ]
    return files + sorted(p for p in K8S.rglob("*") if p.is_file() and p.name != "secrets.env")


def test_every_reviewbot_name_in_the_deployment_files_is_a_setting() -> None:
    for path in deployment_files():
        assert not unknown_settings(path.read_text()), path.relative_to(ROOT)


def test_a_misspelt_setting_is_caught() -> None:
    text = (
        (K8S / "base" / "config.env")
        .read_text()
        .replace("REVIEWBOT_STUDENT_MODEL", "REVIEWBOT_STUDENT_MODLE")
    )
    assert unknown_settings(text) == {"REVIEWBOT_STUDENT_MODLE"}
