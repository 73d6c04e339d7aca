"""blender_addon/dependencies.py: pins, torch choice, the staged deps swap and the non-blocking pip job."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPENDENCIES_PY = REPO_ROOT / "blender_addon" / "dependencies.py"


def _load_dependencies():
    """By path, like install.py does: importing the blender_addon package would need bpy."""
    spec = importlib.util.spec_from_file_location("sd_blender_dependencies", DEPENDENCIES_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


deps = _load_dependencies()


def _fake_distribution(folder: Path, name: str, version: str) -> None:
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nBody: x\n")


def test_runtime_requirements_drop_dev_tools_and_keep_pins() -> None:
    requirements = {req.name: req.version for req in deps.read_requirements(REPO_ROOT / "requirements/constraints.txt")}
    assert not {"bpy", "pytest", "ruff"} & requirements.keys()
    assert requirements["torch"] and requirements["diffusers"] and requirements["numpy"] == "1.26.4"


def test_unsupported_requirement_line_is_named(tmp_path: Path) -> None:
    requirements = tmp_path / "req.txt"
    requirements.write_text("torch>=2\n")
    with pytest.raises(ValueError, match="torch>=2"):
        deps.read_requirements(requirements)


@pytest.mark.parametrize(
    ("facts", "backend"),
    [
        (deps.MachineFacts("Windows", "AMD64", has_nvidia_gpu=True, has_amd_gpu=False), "cuda"),
        (deps.MachineFacts("Darwin", "arm64", has_nvidia_gpu=False, has_amd_gpu=False), "mps"),
        (deps.MachineFacts("Linux", "x86_64", has_nvidia_gpu=False, has_amd_gpu=True), "rocm"),
        (deps.MachineFacts("Linux", "x86_64", has_nvidia_gpu=False, has_amd_gpu=False), "cpu"),
        (deps.MachineFacts("Windows", "AMD64", has_nvidia_gpu=False, has_amd_gpu=True), "cpu"),
        (deps.MachineFacts("Darwin", "x86_64", has_nvidia_gpu=False, has_amd_gpu=False), "cpu"),
    ],
)
def test_torch_backend_for_simulated_machines(facts, backend: str) -> None:
    assert deps.choose_torch_backend(facts) == backend


def test_pip_command_uses_torch_index_or_wheelhouse(tmp_path: Path) -> None:
    pins = [deps.Requirement("torch", "2.14.1")]
    cuda = deps.pip_install_command(["py", "-m", "pip"], tmp_path / "t", pins, tmp_path / "c.txt", "cuda")
    assert cuda[cuda.index("--extra-index-url") + 1] == deps.TORCH_INDEX_URLS["cuda"]
    assert cuda[cuda.index("--target") + 1] == str(tmp_path / "t") and cuda[-1] == "torch==2.14.1"
    mps = deps.pip_install_command(["py", "-m", "pip"], tmp_path / "t", pins, tmp_path / "c.txt", "mps")
    assert "--extra-index-url" not in mps
    offline = deps.pip_install_command(["py"], tmp_path / "t", pins, tmp_path / "c.txt", "cpu", wheelhouse=tmp_path)
    assert "--no-index" in offline and "--index-url" not in offline


def test_installed_versions_and_missing(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "Pillow", "13.0.0")
    _fake_distribution(tmp_path, "torch", "2.14.1+cu130")
    _fake_distribution(tmp_path, "diffusers", "0.41.0")
    installed = deps.installed_distributions(tmp_path)
    assert installed == {"pillow": "13.0.0", "torch": "2.14.1+cu130", "diffusers": "0.41.0"}
    pins = [deps.Requirement(n, v) for n, v in [("pillow", "13.0.0"), ("torch", "2.14.1"), ("diffusers", "0.42.1")]]
    pins.append(deps.Requirement("accelerate"))
    assert [req.name for req in deps.missing_requirements(pins, installed)] == ["diffusers", "accelerate"]


def test_only_a_complete_install_replaces_the_deps_folder(tmp_path: Path) -> None:
    current = tmp_path / "deps"
    _fake_distribution(current, "old", "1")
    incoming = deps.incoming_folder(current)
    _fake_distribution(incoming, "new", "2")
    assert not deps.finish_pending_install(current)  # pip still running or failed: no marker
    assert deps.installed_distributions(current) == {"old": "1"}
    (incoming / deps.COMPLETE_MARKER).touch()
    assert deps.pending_install(current)
    assert deps.finish_pending_install(current)
    assert deps.installed_distributions(current) == {"new": "2"}
    assert not incoming.exists() and not (current / deps.COMPLETE_MARKER).exists()


def _job(tmp_path: Path, script: str) -> deps.DependencyInstallJob:
    """A job whose 'pip' is a small script that writes into the incoming folder the way pip --target does."""
    current = tmp_path / "deps"
    _fake_distribution(current, "old", "1")
    code = textwrap.dedent(script).format(incoming=str(deps.incoming_folder(current)))
    return deps.DependencyInstallJob([sys.executable, "-c", code], current)


def test_install_job_success_swaps_and_reports_progress(tmp_path: Path) -> None:
    job = _job(
        tmp_path,
        """
        import os
        print("Collecting tiny")
        os.makedirs(r"{incoming}/tiny-1.dist-info")
        open(r"{incoming}/tiny-1.dist-info/METADATA", "w").write("Name: tiny\\nVersion: 1\\n")
        print("Successfully installed tiny-1")
        """,
    )
    assert job.poll().state == "idle"
    job.start()
    status = job.wait(30)
    assert status.state == "succeeded", status.lines
    assert status.lines[:2] == ["Collecting tiny", "Successfully installed tiny-1"]
    assert deps.installed_distributions(job.deps) == {"tiny": "1"}


def test_install_job_failure_keeps_old_dependencies(tmp_path: Path) -> None:
    job = _job(tmp_path, 'import os, sys; os.makedirs(r"{incoming}/half"); print("ERROR: no network"); sys.exit(3)')
    job.start()
    status = job.wait(30)
    assert status.state == "failed" and "exit 3" in status.message and "ERROR: no network" in status.lines
    assert deps.installed_distributions(job.deps) == {"old": "1"}
    assert not deps.incoming_folder(job.deps).exists()


def test_install_job_cancel(tmp_path: Path) -> None:
    job = _job(tmp_path, 'import time; print("Downloading", flush=True); time.sleep(60)')
    job.start()
    while not job.poll().lines:
        job.wait(0.05)
    job.cancel()
    status = job.wait(30)
    assert status.state == "cancelled"
    assert deps.installed_distributions(job.deps) == {"old": "1"}


def test_inspect_reports_missing_broken_and_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(tmp_path, "sdb-good", "1.0")
    _fake_distribution(tmp_path, "sdb-broken", "1.0")
    (tmp_path / "sdb_good.py").write_text("")
    (tmp_path / "sdb_broken.py").write_text("raise ImportError('needs libfoo')")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO_ROOT))  # sd_core, as the add-on's _vendor folder provides it
    pins = [deps.Requirement("sdb-good", "1.0"), deps.Requirement("sdb-broken", "1.0"), deps.Requirement("sdb-gone")]
    state = deps.inspect_dependencies(pins)
    assert [package.ok for package in state.packages] == [True, False, False]
    assert state.problems == ["sdb-broken: import failed: ImportError: needs libfoo", "sdb-gone: missing"]
    assert state.device is not None and state.device.startswith(("cpu", "cuda", "mps"))
    assert not state.ok


def test_offline_blender_refuses_to_download() -> None:
    with pytest.raises(deps.OfflineError, match="Allow Online Access"):
        deps.refuse_when_offline(False)
    deps.refuse_when_offline(True)


def test_repair_job_in_blender_honours_online_access(tmp_path: Path) -> None:
    """The bpy module starts with online access off: the repair button must refuse, not download."""
    code = textwrap.dedent(
        f"""
        import bpy, importlib.util, sys
        spec = importlib.util.spec_from_file_location("deps_under_test", {str(DEPENDENCIES_PY)!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        assert not bpy.app.online_access
        try:
            module.start_install_job("bl_ext.user_default.sd_blender")
        except module.OfflineError as error:
            print("REFUSED", error)
        """
    )
    environment = {"BLENDER_USER_RESOURCES": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    assert "REFUSED Online access is disabled" in result.stdout, result.stdout + result.stderr
