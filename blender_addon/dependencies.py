"""The add-on's Python dependencies: where they live, whether they work, and a pip job that (re)installs them.

Dependencies go into the extension's private user folder (``extension_path_user(__package__, path="deps")``),
never into Blender's own site-packages, so they survive add-on updates and cannot break Blender or other
add-ons. That folder is *appended* to ``sys.path``: modules Blender bundles itself (numpy, requests) keep
winning, ours only fill the gaps. ``sd_core`` ships inside the extension in ``_vendor/`` (see install.py).

install.py loads this file outside Blender to share the pinning and pip logic, so it must not import bpy at
module level and must stay importable by a plain Python 3.9+.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

DEPS_FOLDER = "deps"
VENDOR_FOLDER = "_vendor"
CONSTRAINTS_FILE = "constraints.txt"
COMPLETE_MARKER = ".complete"
DEV_ONLY_PACKAGES = frozenset({"bpy", "pytest", "ruff", "open-clip-torch"})  # requirements/dev.txt only
TORCH_BACKENDS = ("cuda", "rocm", "mps", "cpu")
PYPI_INDEX_URL = "https://pypi.org/simple"
# PyTorch's own indexes hold the GPU builds; macOS (MPS) wheels come from PyPI itself.
TORCH_INDEX_URLS = {
    "cuda": "https://download.pytorch.org/whl/cu130",
    "rocm": "https://download.pytorch.org/whl/rocm6.4",
    "cpu": "https://download.pytorch.org/whl/cpu",
}
# Distribution names whose import name differs; the others import as the name with "-" turned into "_".
IMPORT_NAMES = {"pillow": "PIL", "opencv-python-headless": "cv2", "controlnet-aux": "controlnet_aux"}
_NVIDIA_PCI_VENDOR = "0x10de"
_AMD_PCI_VENDOR = "0x1002"


class OfflineError(RuntimeError):
    """Blender's "Allow Online Access" is off: the add-on must not download anything."""


@dataclass(frozen=True)
class Requirement:
    """One pinned (or bare) package from the constraints file, name normalised as pip does."""

    name: str
    version: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}" if self.version else self.name

    @property
    def import_name(self) -> str:
        return IMPORT_NAMES.get(self.name, self.name.replace("-", "_"))


@dataclass(frozen=True)
class MachineFacts:
    """What decides the torch build; a plain value so tests can simulate any machine."""

    system: str  # platform.system(): "Linux", "Windows" or "Darwin"
    machine: str  # platform.machine(): "x86_64", "AMD64", "arm64", ...
    has_nvidia_gpu: bool
    has_amd_gpu: bool


def normalize_name(name: str) -> str:
    """PEP 503 name, so "Pillow", "huggingface_hub" and "huggingface-hub" compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path) -> list[Requirement]:
    """Runtime requirements from a constraints-style file: `name==version` or `name` lines, dev tools dropped."""
    requirements = []
    for raw_line in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([A-Za-z0-9.+!_-]+))?", line)
        if match is None:
            raise ValueError(f"{path}: unsupported requirement line {raw_line!r} (use 'name==version').")
        name = normalize_name(match.group(1))
        if name not in DEV_ONLY_PACKAGES:
            requirements.append(Requirement(name, match.group(2)))
    return requirements


def shipped_constraints() -> Path:
    """The pinned set: copied next to this file by the build, or the repository's file in a dev checkout."""
    here = Path(__file__).resolve().parent
    shipped = here / CONSTRAINTS_FILE
    return shipped if shipped.exists() else here.parent / "requirements" / CONSTRAINTS_FILE


def _pci_vendors() -> set[str]:
    vendors = set()
    for vendor_file in Path("/sys/class/drm").glob("card*/device/vendor"):
        with contextlib.suppress(OSError):
            vendors.add(vendor_file.read_text().strip().lower())
    return vendors


def detect_machine() -> MachineFacts:
    """Look for GPU drivers the way the torch builds need them: NVIDIA driver for CUDA, amdgpu/KFD for ROCm."""
    system = platform.system()
    has_nvidia = shutil.which("nvidia-smi") is not None
    has_amd = False
    if system == "Windows":
        system_root = Path(os.environ.get("SYSTEMROOT", r"C:\Windows"))
        has_nvidia = has_nvidia or (system_root / "System32" / "nvidia-smi.exe").exists()
    elif system == "Linux":
        vendors = _pci_vendors()
        has_nvidia = has_nvidia or Path("/proc/driver/nvidia/version").exists() or _NVIDIA_PCI_VENDOR in vendors
        has_amd = Path("/dev/kfd").exists() and _AMD_PCI_VENDOR in vendors
    return MachineFacts(system, platform.machine(), has_nvidia, has_amd)


def choose_torch_backend(facts: MachineFacts) -> str:
    """CUDA for NVIDIA, ROCm for AMD on Linux (torch has no ROCm build elsewhere), MPS on Apple silicon, else CPU."""
    if facts.system == "Darwin":
        return "mps" if facts.machine.lower() in {"arm64", "aarch64"} else "cpu"
    if facts.has_nvidia_gpu:
        return "cuda"
    if facts.has_amd_gpu and facts.system == "Linux":
        return "rocm"
    return "cpu"


def pip_runner(python: str) -> list[str]:
    """How to run pip with this Python; falls back to ensurepip's bundled wheel so nothing lands in Blender's site."""
    if importlib.util.find_spec("pip") is not None:
        return [python, "-m", "pip"]
    import ensurepip

    bundled = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    if not bundled:
        raise RuntimeError("This Python has neither pip nor ensurepip's bundled pip wheel.")
    return [python, str(bundled[-1] / "pip")]


def pip_install_command(
    pip: list[str],
    target: Path,
    requirements: list[Requirement],
    constraints: Path,
    backend: str,
    *,
    index_url: str | None = None,
    wheelhouse: Path | None = None,
) -> list[str]:
    """One pip call for the whole set, so pip resolves torch and everything that depends on it together.

    The torch index is an *extra* index: pip then prefers its local-version builds (2.x.y+cu130) over PyPI's.
    """
    if wheelhouse is not None:
        sources = ["--no-index", "--find-links", str(wheelhouse)]
    else:
        sources = ["--index-url", index_url or PYPI_INDEX_URL]
        if TORCH_INDEX_URLS.get(backend):
            sources += ["--extra-index-url", TORCH_INDEX_URLS[backend]]
    return [
        *pip,
        "install",
        "--target",
        str(target),
        "--disable-pip-version-check",
        "--no-warn-script-location",
        *sources,
        "--constraint",
        str(constraints),
        *(requirement.spec for requirement in requirements),
    ]


def installed_distributions(folder: Path) -> dict[str, str]:
    """Name -> version of the distributions pip put into a --target folder, read from their metadata files."""
    found = {}
    for metadata_file in Path(folder).glob("*.dist-info/METADATA"):
        headers = {}
        with contextlib.suppress(OSError), open(metadata_file, encoding="utf-8", errors="replace") as metadata:
            for line in metadata:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                headers.setdefault(key.strip().lower(), value.strip())
        if "name" in headers and "version" in headers:
            found[normalize_name(headers["name"])] = headers["version"]
    return found


def version_satisfies(installed: str | None, required: str | None) -> bool:
    """'2.14.1+cu130' satisfies '==2.14.1' exactly as pip's PEP 440 matching does."""
    if installed is None:
        return False
    return required is None or installed == required or installed.split("+", 1)[0] == required


def missing_requirements(requirements: list[Requirement], installed: dict[str, str]) -> list[Requirement]:
    """Requirements that are absent or at another version than pinned."""
    return [req for req in requirements if not version_satisfies(installed.get(req.name), req.version)]


def incoming_folder(deps: Path) -> Path:
    """Where pip installs first, so a failed or cancelled install never damages the working deps folder."""
    return deps.with_name(deps.name + ".incoming")


def pending_install(deps: Path) -> bool:
    """A finished install waits for a restart (its files could not replace ones in use)."""
    return (incoming_folder(deps) / COMPLETE_MARKER).exists()


def finish_pending_install(deps: Path) -> bool:
    """Swap a completed incoming folder in; False while the old files are locked (Windows, Blender running)."""
    incoming = incoming_folder(deps)
    if not (incoming / COMPLETE_MARKER).exists():
        return False
    retired = deps.with_name(deps.name + ".old")
    try:
        shutil.rmtree(retired, ignore_errors=True)
        if deps.exists():
            deps.rename(retired)
        incoming.rename(deps)
    except OSError:
        if not deps.exists() and retired.exists():
            retired.rename(deps)
        return False
    (deps / COMPLETE_MARKER).unlink()
    shutil.rmtree(retired, ignore_errors=True)
    return True


# --- Inside Blender -------------------------------------------------------------------------------------------

_added_paths: list[str] = []


def deps_folder(package: str) -> Path:
    """The extension's private dependency folder for this Blender user (created on demand)."""
    import bpy

    return Path(bpy.utils.extension_path_user(package, path=DEPS_FOLDER, create=True))


def vendor_folder() -> Path:
    return Path(__file__).resolve().parent / VENDOR_FOLDER


def activate(package: str) -> list[str]:
    """Call before importing anything that needs sd_core: finish a staged install, put vendor + deps on sys.path."""
    folders = [vendor_folder()]
    if package.startswith("bl_ext."):  # a dev checkout imported as a plain package has no user folder
        deps = deps_folder(package)
        finish_pending_install(deps)
        folders.append(deps)
    for path in folders:
        if path.is_dir() and str(path) not in sys.path:
            sys.path.append(str(path))
            _added_paths.append(str(path))
    importlib.invalidate_caches()
    return list(_added_paths)


def deactivate() -> None:
    """Call from unregister(): take our folders off sys.path again (already imported modules stay loaded)."""
    while _added_paths:
        path = _added_paths.pop()
        if path in sys.path:
            sys.path.remove(path)


@dataclass(frozen=True)
class PackageState:
    name: str
    required: str | None
    installed: str | None
    location: str | None
    import_error: str | None

    @property
    def ok(self) -> bool:
        return self.import_error is None and version_satisfies(self.installed, self.required)


@dataclass(frozen=True)
class DependencyState:
    """What the preferences panel shows: per package, the torch device, and whether a restart is needed."""

    packages: tuple[PackageState, ...]
    device: str | None
    device_error: str | None
    restart_required: bool = False

    @property
    def ok(self) -> bool:
        return all(package.ok for package in self.packages) and self.device is not None

    @property
    def problems(self) -> list[str]:
        lines = []
        for package in self.packages:
            if package.installed is None:
                lines.append(f"{package.name}: missing")
            elif not version_satisfies(package.installed, package.required):
                lines.append(f"{package.name}: {package.installed} installed, {package.required} required")
            elif package.import_error:
                lines.append(f"{package.name}: import failed: {package.import_error}")
        if self.device_error:
            lines.append(f"device: {self.device_error}")
        return lines


def describe_device() -> tuple[str | None, str | None]:
    """The placement sd_core will pick on 'auto', e.g. 'cuda:0 (RTX 4090), float16', or the reason it can't."""
    try:
        from sd_core.device import resolve_placement

        return resolve_placement().describe(), None
    except Exception as error:
        return None, f"{type(error).__name__}: {error}"


def inspect_dependencies(
    requirements: list[Requirement], *, import_modules: bool = True, deps: Path | None = None
) -> DependencyState:
    """Check what Python will really import (sys.path order), so shadowed or broken packages show up too.

    Importing torch the first time takes seconds: call this once (e.g. after register or a repair), not per redraw.
    """
    packages = []
    for requirement in requirements:
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        location = import_error = None
        if installed is not None:
            try:
                spec = importlib.util.find_spec(requirement.import_name)
                location = spec.origin if spec else None
                if import_modules:
                    importlib.import_module(requirement.import_name)
            except Exception as error:
                import_error = f"{type(error).__name__}: {error}"
        packages.append(PackageState(requirement.name, requirement.version, installed, location, import_error))
    device, device_error = describe_device() if import_modules else (None, None)
    restart = deps is not None and pending_install(deps)
    return DependencyState(tuple(packages), device, device_error, restart)


@dataclass
class JobStatus:
    state: str  # "idle", "running", "succeeded", "failed", "cancelled"
    message: str = ""
    lines: list[str] = field(default_factory=list)


class DependencyInstallJob:
    """Runs pip in a worker thread; the UI polls it from a timer, so Blender never freezes during GB downloads."""

    MAX_LINES = 200

    def __init__(self, command: list[str], deps: Path) -> None:
        self.command = command
        self.deps = deps
        self._lines: deque[str] = deque(maxlen=self.MAX_LINES)
        self._state = "idle"
        self._message = ""
        self._process: subprocess.Popen[str] | None = None
        self._cancelled = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sd-blender-pip", daemon=True)

    def start(self) -> None:
        with self._lock:
            self._state = "running"
            self._message = "Installing dependencies..."
        self._thread.start()

    def poll(self) -> JobStatus:
        with self._lock:
            return JobStatus(self._state, self._message, list(self._lines))

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until done: for tests and scripts, never for the UI."""
        self._thread.join(timeout)
        return self.poll()

    def _finish(self, state: str, message: str) -> None:
        with self._lock:
            self._state, self._message = state, message
            self._lines.append(message)

    def _run(self) -> None:
        incoming = incoming_folder(self.deps)
        shutil.rmtree(incoming, ignore_errors=True)
        try:
            with self._lock:
                if self._cancelled:
                    raise InterruptedError
                self._process = subprocess.Popen(
                    self.command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    env={**os.environ, "PYTHONNOUSERSITE": "1"},
                )
            assert self._process.stdout is not None
            for line in self._process.stdout:
                with self._lock:
                    self._lines.append(line.rstrip())
            return_code = self._process.wait()
        except InterruptedError:
            return_code = -1
        except OSError as error:
            self._finish("failed", f"Could not start pip: {error}")
            return
        if self._cancelled:
            shutil.rmtree(incoming, ignore_errors=True)
            self._finish("cancelled", "Cancelled; the previous dependencies are untouched.")
        elif return_code != 0:
            shutil.rmtree(incoming, ignore_errors=True)
            self._finish("failed", f"pip failed (exit {return_code}); see the lines above. Nothing was changed.")
        else:
            (incoming / COMPLETE_MARKER).touch()
            if _modules_loaded_from(self.deps) or not finish_pending_install(self.deps):
                self._finish("succeeded", "Dependencies installed: restart Blender to use them.")
            else:
                importlib.invalidate_caches()
                self._finish("succeeded", "Dependencies installed.")


def _modules_loaded_from(folder: Path) -> bool:
    """Files of imported modules can't be replaced safely (and are locked on Windows): then swap at restart."""
    prefix = str(folder) + os.sep
    return any((getattr(module, "__file__", None) or "").startswith(prefix) for module in list(sys.modules.values()))


def refuse_when_offline(online_access: bool) -> None:
    if not online_access:
        raise OfflineError(
            "Online access is disabled: enable 'Allow Online Access' in Preferences > System > Network "
            "to download the dependencies, or run install.py outside Blender."
        )


def start_install_job(package: str, backend: str | None = None) -> DependencyInstallJob:
    """The "Install / Repair dependencies" button: pip with Blender's own Python into the private deps folder."""
    import bpy

    refuse_when_offline(bpy.app.online_access)
    deps = deps_folder(package)
    command = pip_install_command(
        pip_runner(sys.executable),
        incoming_folder(deps),
        read_requirements(shipped_constraints()),
        shipped_constraints(),
        backend or choose_torch_backend(detect_machine()),
    )
    job = DependencyInstallJob(command, deps)
    job.start()
    return job
