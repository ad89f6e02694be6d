"""retain as a team installs it: the wheel holds the library, the training job and the service, so the
commands run from a fresh virtual environment with nothing of the checkout; and the service builds as a
Bento around that wheel."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def run(command, **options) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **options)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the build leaves nothing in the checkout)."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH; `make setup` installs it")
    source = tmp_path_factory.mktemp("source")
    for name in ("src", "training", "serving"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    run([uv, "build", "--wheel", "--quiet", "-o", str(source / "dist"), str(source)])
    (built,) = (source / "dist").glob("retain-*.whl")
    return built


def test_the_wheel_holds_the_library_the_training_job_and_the_service(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("retain/cli.py", "retain/features/sql", "training/job.py", "serving/service.py", "serving/app.py"):
        assert any(name.startswith(module) for name in names), module
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_the_installed_wheel_runs_the_commands_from_anywhere(wheel, tmp_path):
    uv = shutil.which("uv")
    venv = tmp_path / "venv"
    run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
    python = venv / "bin" / "python"
    run([uv, "pip", "sync", "--quiet", "--python", str(python), str(ROOT / "requirements.lock")])
    run([uv, "pip", "install", "--quiet", "--python", str(python), "--no-deps", str(wheel)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    away = tmp_path / "elsewhere"  # no checkout here: what runs comes from the wheel
    away.mkdir()
    assert "train" in run([str(venv / "bin" / "retain"), "--help"], cwd=away, env=env).stdout
    assert "--force-promote" in run([str(venv / "bin" / "retain"), "train", "--help"], cwd=away, env=env).stdout
    code = "import training.job, serving.service; print(serving.service.__file__)"
    where = run([str(python), "-c", code], cwd=away, env=env)
    assert str(venv) in where.stdout
    missing = subprocess.run(
        [str(venv / "bin" / "retain"), "train", "--data", str(away / "none")],
        cwd=away,
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr


def test_the_service_builds_as_a_bento_around_the_wheel(wheel, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    shutil.copytree(ROOT / "serving", context / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("bentofile.yaml", "retain.toml", "requirements.lock"):
        shutil.copy2(ROOT / name, context / name)
    (context / "dist").mkdir()
    shutil.copy2(wheel, context / "dist" / wheel.name)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).with_name("bentoml")
    tag = run([str(bentoml), "build", "--output", "tag"], cwd=context, env=env).stdout.strip().splitlines()[-1]
    assert tag.startswith("__tag__:retain:")
    (bento,) = (tmp_path / "bentoml" / "bentos" / "retain").glob(tag.split(":")[-1])
    assert (bento / "env" / "python" / "wheels" / wheel.name).exists()
    assert (bento / "src" / "serving" / "service.py").exists()
