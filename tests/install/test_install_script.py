"""install.py against the bpy module in a temporary Blender user folder, and against fake Blender executables."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BPY_PYTHON = sys.executable  # the dev venv's Python has the bpy module: the "Blender" without a binary


def _load_install():
    spec = importlib.util.spec_from_file_location("install_under_test", REPO_ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


install = _load_install()


def _wheel(folder: Path, name: str, body: str = "VALUE = 42\n") -> Path:
    """A tiny pure-Python wheel, so pip runs for real but offline and in about a second."""
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}.py": body,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in files.items():
            archive.writestr(member, content)
        archive.writestr(f"{info}/RECORD", "".join(f"{member},,\n" for member in [*files, f"{info}/RECORD"]))
    return path


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A private Blender user folder, a wheelhouse and a requirement set of tiny wheels."""
    monkeypatch.setenv("BLENDER_USER_RESOURCES", str(tmp_path / "user"))
    monkeypatch.setattr(install, "DIST_FOLDER", tmp_path / "dist")
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    _wheel(wheelhouse, "sdb_tiny")
    _wheel(wheelhouse, "sdb_broken", body="raise ImportError('missing libfoo')\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("sdb-tiny==1.0\n")
    arguments = [
        "--bpy-module-python",
        BPY_PYTHON,
        "--requirements",
        str(requirements),
        "--wheelhouse",
        str(wheelhouse),
    ]
    return {"args": arguments, "requirements": requirements, "user": tmp_path / "user"}


def _extension_state() -> dict:
    return install.extension_state(install.probe_blender(install.BlenderTarget(Path(BPY_PYTHON), is_bpy_module=True)))


def _fake_blender(folder: Path, version: list[int], python: list[int], name: str = "blender") -> Path:
    """A shell script that answers the version probe the way Blender would."""
    info = {"version": version, "version_string": ".".join(map(str, version)), "python": python}
    info.update(python_executable="/x/python", system="Linux", machine="x86_64", scripts="/x", deps="/x/deps", pip=[])
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(
        f"#!/bin/sh\necho 'Blender {info['version_string']}'\necho '{install.RESULT_MARKER}{json.dumps(info)}'\n"
    )
    script.chmod(0o755)
    return script


def test_install_check_rerun_uninstall(sandbox: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert install.main(sandbox["args"]) == 0
    out = capsys.readouterr().out
    assert "Done: bl_ext.user_default.sd_blender is enabled in Blender 5.0.1; device: cpu" in out

    assert install.main([*sandbox["args"], "--check"]) == 0
    out = capsys.readouterr().out
    assert "installed and enabled" in out and "_vendor/sd_core/__init__.py" in out and "Device: cpu" in out

    assert install.main(sandbox["args"]) == 0  # re-run: pip is skipped, the add-on is reinstalled
    assert "all 1 pinned packages present" in capsys.readouterr().out

    assert install.main([*sandbox["args"], "--uninstall"]) == 0
    assert "Removed the add-on and its private dependencies" in capsys.readouterr().out
    assert install.main([*sandbox["args"], "--check"]) == 1
    out = capsys.readouterr().out
    assert "missing or wrong version:\n  sdb-tiny==1.0" in out and "Add-on: not installed." in out
    assert install.main([*sandbox["args"], "--uninstall"]) == 0
    assert "Nothing to remove" in capsys.readouterr().out


def test_dry_run_changes_nothing(sandbox: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert install.main([*sandbox["args"], "--dry-run", "--torch", "cuda"]) == 0
    plan = capsys.readouterr().out
    assert "Blender 5.0.1 (Python 3.11" in plan and "torch build: cuda" in plan
    assert "-m pip install --target" in plan and "sdb-tiny==1.0" in plan and "--split-platforms" in plan
    assert not sandbox["user"].exists() or not any((sandbox["user"] / "extensions").rglob("deps*"))
    assert not install.DIST_FOLDER.exists()


@pytest.mark.parametrize(
    ("facts", "extra_index"),
    [
        (install.deps.MachineFacts("Windows", "AMD64", True, False), "https://download.pytorch.org/whl/cu130"),
        (install.deps.MachineFacts("Darwin", "arm64", False, False), None),
        (install.deps.MachineFacts("Linux", "x86_64", False, True), "https://download.pytorch.org/whl/rocm6.4"),
        (install.deps.MachineFacts("Linux", "x86_64", False, False), "https://download.pytorch.org/whl/cpu"),
    ],
)
def test_plan_for_simulated_machines(tmp_path: Path, facts, extra_index: str | None) -> None:
    blender = install.BlenderInfo(
        install.BlenderTarget(Path("blender")),
        (4, 2, 3),
        "4.2.3",
        (3, 11, 7),
        "py",
        "x",
        tmp_path,
        tmp_path / "deps",
        ["py", "-m", "pip"],
    )
    plan = install.make_plan(
        blender,
        backend=None,
        requirements_file=install.CONSTRAINTS,
        index_url=None,
        wheelhouse=None,
        force=False,
        machine=facts,
    )
    assert plan.backend == install.deps.choose_torch_backend(facts)
    assert plan.index_urls == [url for url in ["https://pypi.org/simple", extra_index] if url]
    assert "torch==2.14.1" in plan.pip_command and "bpy==5.0.1" not in plan.pip_command
    assert len(plan.missing) == len(plan.requirements)  # nothing installed yet


def test_failed_pip_enables_nothing(sandbox: dict, capsys: pytest.CaptureFixture[str]) -> None:
    sandbox["requirements"].write_text("sdb-tiny==1.0\nsdb-not-there==9.9\n")
    assert install.main(sandbox["args"]) == 1
    error = capsys.readouterr().err
    assert "install.py: pip could not install the dependencies (exit 1" in error and "Traceback" not in error
    assert _extension_state()["installed"] is False
    assert not list((sandbox["user"] / "extensions").rglob("sdb_tiny.py"))  # the half install was thrown away


def test_broken_dependency_leaves_the_addon_disabled(sandbox: dict, capsys: pytest.CaptureFixture[str]) -> None:
    sandbox["requirements"].write_text("sdb-broken==1.0\n")
    assert install.main(sandbox["args"]) == 1
    error = capsys.readouterr().err
    assert "sdb-broken: import failed: ImportError: missing libfoo" in error and "disabled again" in error
    state = _extension_state()
    assert state["installed"] and not state["enabled"]


def test_no_disk_space(sandbox: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(install, "free_bytes", lambda folder: 512 * 1024**2)
    assert install.main(sandbox["args"]) == 1
    assert "Not enough disk space: the cpu dependencies need about 4 GB free" in capsys.readouterr().err


def test_no_network(sandbox: dict, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = [arg for arg in sandbox["args"] if arg != "--wheelhouse"][:-1]
    assert "--wheelhouse" not in arguments
    assert install.main([*arguments, "--index-url", "http://127.0.0.1:9/simple", "--torch", "mps"]) == 1
    error = capsys.readouterr().err
    assert "Cannot reach http://127.0.0.1:9/simple" in error and "--wheelhouse" in error


def test_old_blender_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blender = _fake_blender(tmp_path, [3, 4, 1], [3, 10, 12])
    assert install.main(["--blender", str(blender)]) == 1
    error = capsys.readouterr().err
    assert f"Blender 3.4.1 at {blender} is too old" in error and "needs Blender 4.2.0 or newer" in error


def test_blender_with_other_python_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blender = _fake_blender(tmp_path, [5, 1, 0], [3, 13, 5])
    assert install.main(["--blender", str(blender)]) == 1
    assert (
        "Blender 5.1.0 bundles Python 3.13.5, but the tested dependency set needs Python 3.11"
        in capsys.readouterr().err
    )


def test_not_blender_and_not_executable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    impostor = tmp_path / "blender"
    impostor.write_text("#!/bin/sh\necho 'segfault' >&2\nexit 3\n")
    impostor.chmod(0o755)
    assert install.main(["--blender", str(impostor)]) == 1
    assert "failed (exit 3)" in capsys.readouterr().err
    impostor.chmod(0o644)
    assert install.main(["--blender", str(impostor)]) == 1
    assert "is not executable" in capsys.readouterr().err
    assert install.main(["--blender", str(tmp_path / "nowhere")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_blender_found_on_path_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = _fake_blender(tmp_path / "bin", [4, 2, 0], [3, 11, 7])
    monkeypatch.setattr(install, "usual_blender_locations", lambda *_: [str(tmp_path / "opt" / "*" / "blender")])
    _fake_blender(tmp_path / "opt" / "a", [4, 2, 0], [3, 11, 7])
    assert install.find_blender(None, "Linux", tmp_path, {"PATH": str(tmp_path / "bin")}) == on_path


def test_several_or_no_blenders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(install, "usual_blender_locations", lambda *_: [str(tmp_path / "opt" / "*" / "blender")])
    monkeypatch.setattr(install.platform, "system", lambda: "Linux")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert install.main([]) == 1
    assert "Blender was not found on PATH or in the usual install locations" in capsys.readouterr().err
    only = _fake_blender(tmp_path / "opt" / "4.2", [4, 2, 0], [3, 11, 7])
    assert install.find_blender(None, "Linux", tmp_path, {"PATH": ""}) == only
    other = _fake_blender(tmp_path / "opt" / "5.0", [5, 0, 1], [3, 11, 7])
    assert install.main([]) == 1
    error = capsys.readouterr().err
    assert (
        "Found several Blenders; choose one with --blender PATH" in error and str(only) in error and str(other) in error
    )


def test_usual_locations_per_platform(tmp_path: Path) -> None:
    windows = install.usual_blender_locations("Windows", tmp_path, {"PROGRAMFILES": r"C:\Program Files"})
    assert r"C:\Program Files\Blender Foundation\Blender*\blender.exe" in windows
    assert "/Applications/Blender*.app/Contents/MacOS/Blender" in install.usual_blender_locations(
        "Darwin", tmp_path, {}
    )
    assert "/snap/bin/blender" in install.usual_blender_locations("Linux", tmp_path, {})


def test_manifest_passes_blenders_validator() -> None:
    builder = _blender_ext_py()
    result = subprocess.run(
        [sys.executable, str(builder), "validate", str(REPO_ROOT / "blender_addon")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_ships_sd_core_and_pins_for_every_platform(tmp_path: Path) -> None:
    blender = install.BlenderInfo(
        install.BlenderTarget(Path(BPY_PYTHON), is_bpy_module=True),
        (5, 0, 1),
        "5.0.1",
        (3, 11, 7),
        BPY_PYTHON,
        "macos-arm64",
        _blender_ext_py().parents[3],
        tmp_path / "deps",
        [],
    )
    package = install.build_extension(blender, tmp_path)
    assert package.name.endswith("-macos_arm64.zip")
    assert sorted(path.name.split("-")[-1] for path in tmp_path.glob("*.zip")) == [
        "linux_x64.zip",
        "macos_arm64.zip",
        "windows_x64.zip",
    ]
    names = zipfile.ZipFile(package).namelist()
    assert {"blender_manifest.toml", "dependencies.py", "constraints.txt", "_vendor/sd_core/__init__.py"} <= set(names)
    assert not [name for name in names if "__pycache__" in name]


def _blender_ext_py() -> Path:
    """Blender's extension tool inside the bpy wheel, found without importing bpy (once per process only)."""
    bpy_folder = Path(importlib.util.find_spec("bpy").submodule_search_locations[0])
    return next(bpy_folder.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
