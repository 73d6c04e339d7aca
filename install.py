"""One command from a fresh download to a working "Stable Diffusion" add-on in the artist's own Blender.

    python install.py                       # find Blender, install dependencies, build, install, enable, verify
    python install.py --blender "C:/Program Files/Blender Foundation/Blender 4.2/blender.exe"
    python install.py --torch cpu           # override the detected torch build (cuda, rocm, mps, cpu)
    python install.py --dry-run             # print the plan, change nothing
    python install.py --check               # what is installed, what is missing (exit 1 if anything is)
    python install.py --uninstall           # remove the add-on and its private dependencies
    python install.py --wheelhouse DIR      # install offline from a folder of wheels

Steps, each safe to re-run (a re-run skips what is already done, pip reuses its download cache):
1. Ask that Blender, headless, for its version, bundled Python and folders; refuse Blender < 4.2 and any
   Python other than the one the pinned set (requirements/constraints.txt) was tested with.
2. pip-install the pinned runtime set with *Blender's* Python into the extension's private user folder
   (``extension_path_user("bl_ext.user_default.sd_blender", path="deps")``). pip writes into a sibling
   ``deps.incoming`` first and only a complete install replaces ``deps``: a failure leaves the old one intact.
3. Build the extension with Blender's own tool (``blender_ext.py build --split-platforms``, which is what
   ``blender --command extension build`` runs) from a staging copy: ``blender_addon/`` plus
   ``sd_core/`` vendored as ``_vendor/sd_core`` plus the constraints file. Vendoring keeps sd_core a
   top-level package (its absolute imports work unchanged) that ships and updates with the add-on; the
   add-on appends ``_vendor`` and ``deps`` to sys.path when it is imported (dependencies.activate).
   Not the manifest's ``wheels``: Blender puts those in one site-packages shared by all extensions, and a
   multi-GB, GPU-specific torch does not belong inside an extension package.
4. Install it into the "user_default" repository with Blender's extension installer, enable it and save the
   preferences; then launch Blender again and import sd_core from the installed add-on and print its device.
   If that check fails the add-on is disabled again, so nothing half-installed stays enabled.

Running this script is the artist's consent to download; Blender's "Allow Online Access" is honoured by the
in-Blender repair button instead. ``--reinstall-deps`` forces pip even when every pin is present.

For development and CI ``--bpy-module-python PY`` targets a Python that has the ``bpy`` wheel instead of a
Blender binary. Runs on any Python 3.9+ (only the standard library); Blender's own Python works too.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
ADDON_SOURCE = REPO_ROOT / "blender_addon"
CORE_SOURCE = REPO_ROOT / "sd_core"
CONSTRAINTS = REPO_ROOT / "requirements" / "constraints.txt"
DIST_FOLDER = REPO_ROOT / "dist"
EXTENSION_ID = "sd_blender"
EXTENSION_REPO = "user_default"
EXTENSION_MODULE = f"bl_ext.{EXTENSION_REPO}.{EXTENSION_ID}"
MIN_BLENDER = (4, 2, 0)
SUPPORTED_PYTHON = (3, 11)
RESULT_MARKER = "@@SD_BLENDER_RESULT@@"
GIB = 1024**3
# Rough peak use during an install (new set in deps.incoming beside the old one): GPU builds are big.
REQUIRED_FREE_BYTES = {"cuda": 14 * GIB, "rocm": 24 * GIB, "mps": 4 * GIB, "cpu": 4 * GIB}


class InstallError(Exception):
    """A failure the artist can act on: printed as one message, exit status 1, no traceback."""


def _load_dependencies_module():
    """The add-on's dependencies.py holds the pins, torch choice and pip logic: one source of truth for both."""
    spec = importlib.util.spec_from_file_location("sd_blender_dependencies", ADDON_SOURCE / "dependencies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


deps = _load_dependencies_module()


# --- Running code inside Blender ------------------------------------------------------------------------------

PROBE_CODE = """
import importlib.util, json, os, platform, sys
import bpy
info = {"version": list(bpy.app.version), "version_string": bpy.app.version_string,
        "python": list(sys.version_info[:3]), "python_executable": sys.executable,
        "system": platform.system(), "machine": platform.machine()}
try:
    info["scripts"] = bpy.utils.system_resource("SCRIPTS")
    info["deps"] = bpy.utils.extension_path_user(MODULE, path="deps")
    spec = importlib.util.spec_from_file_location("sd_blender_dependencies", DEPENDENCIES_PY)
    dependencies = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = dependencies
    spec.loader.exec_module(dependencies)
    info["pip"] = dependencies.pip_runner(sys.executable)
except Exception as error:
    info["probe_error"] = f"{type(error).__name__}: {error}"
print(MARKER + json.dumps(info))
"""

EXTENSION_STATE_CODE = """
import json, os, addon_utils, bpy
repos = {repo.module: repo for repo in bpy.context.preferences.extensions.repos}
folder = os.path.join(repos[REPO].directory, EXTENSION_ID) if REPO in repos else ""
print(MARKER + json.dumps({"installed": os.path.isdir(folder), "folder": folder,
                           "enabled": MODULE in bpy.context.preferences.addons}))
"""

INSTALL_EXTENSION_CODE = """
import json, addon_utils, bpy
bpy.ops.extensions.package_install_files(filepath=ZIP, repo=REPO, enable_on_install=True)
loaded = addon_utils.check(MODULE)[1]
if loaded:
    bpy.ops.wm.save_userpref()
print(MARKER + json.dumps({"enabled": bool(loaded)}))
"""

UNINSTALL_EXTENSION_CODE = """
import json, os, addon_utils, bpy
repos = list(bpy.context.preferences.extensions.repos)
index = [repo.module for repo in repos].index(REPO)
installed = os.path.isdir(os.path.join(repos[index].directory, EXTENSION_ID))
if MODULE in bpy.context.preferences.addons:
    addon_utils.disable(MODULE, default_set=True)
if installed:
    bpy.ops.extensions.package_uninstall(repo_index=index, pkg_id=EXTENSION_ID)
bpy.ops.wm.save_userpref()
print(MARKER + json.dumps({"removed": installed}))
"""

DISABLE_EXTENSION_CODE = """
import json, addon_utils, bpy
if MODULE in bpy.context.preferences.addons:
    addon_utils.disable(MODULE, default_set=True)
    bpy.ops.wm.save_userpref()
print(MARKER + json.dumps({"enabled": MODULE in bpy.context.preferences.addons}))
"""

VERIFY_CODE = """
import importlib, json, sys, addon_utils, bpy
result = {"enabled": MODULE in bpy.context.preferences.addons and bool(addon_utils.check(MODULE)[1])}
if result["enabled"]:
    dependencies = importlib.import_module(MODULE + ".dependencies")
    dependencies.activate(MODULE)
    requirements = [dependencies.Requirement(name, version) for name, version in REQUIREMENTS]
    state = dependencies.inspect_dependencies(requirements, deps=dependencies.deps_folder(MODULE))
    import sd_core
    result.update(device=state.device, problems=state.problems, sd_core=sd_core.__file__)
print(MARKER + json.dumps(result))
"""


@dataclass(frozen=True)
class BlenderTarget:
    """How to run Python inside one Blender: its binary, or (dev/CI) a Python that has the bpy module."""

    executable: Path
    is_bpy_module: bool = False

    def command(self, code: str, *, user_preferences: bool) -> list[str]:
        """user_preferences=False runs on factory settings: fast and can't touch the artist's preferences."""
        if self.is_bpy_module:
            load_preferences = "bpy.ops.wm.read_userpref()\n" if user_preferences else ""
            return [str(self.executable), "-c", f"import bpy\n{load_preferences}{code}"]
        startup = [] if user_preferences else ["--factory-startup"]
        return [str(self.executable), "-b", *startup, "--python-exit-code", "1", "--python-expr", code]

    def run(self, code: str, *, user_preferences: bool = False, timeout: float = 600, **values: object) -> dict:
        """Run code with `values` bound as globals; it reports by printing RESULT_MARKER + JSON."""
        constants = "".join(f"{name} = {value!r}\n" for name, value in {"MARKER": RESULT_MARKER, **values}.items())
        command = self.command(constants + code, user_preferences=user_preferences)
        try:
            # A neutral working directory: the repository's own sd_core must not shadow the installed one.
            process = subprocess.run(
                command, capture_output=True, text=True, errors="replace", timeout=timeout, cwd=tempfile.gettempdir()
            )
        except FileNotFoundError as error:
            raise InstallError(f"Cannot run {self.executable}: {error.strerror}.") from error
        except PermissionError as error:
            raise InstallError(f"Cannot run {self.executable}: it is not executable.") from error
        except subprocess.TimeoutExpired as error:
            raise InstallError(f"{self.executable} did not answer within {timeout:.0f} s.") from error
        results = [line for line in process.stdout.splitlines() if line.startswith(RESULT_MARKER)]
        if process.returncode != 0 or not results:
            tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-8:])
            raise InstallError(
                f"{self.executable} failed (exit {process.returncode}) while running a Blender step. "
                f"Is it really Blender?\n{tail}"
            )
        return json.loads(results[-1][len(RESULT_MARKER) :])


@dataclass(frozen=True)
class BlenderInfo:
    target: BlenderTarget
    version: tuple[int, ...]
    version_string: str
    python: tuple[int, ...]
    python_executable: str
    platform_tag: str
    scripts: Path
    deps: Path
    pip: list[str]


def platform_tag(system: str, machine: str) -> str:
    """The extension platform name (as in blender_manifest.toml), e.g. 'windows-x64', 'macos-arm64'."""
    os_name = {"Windows": "windows", "Darwin": "macos"}.get(system, system.lower())
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(machine.lower(), machine.lower())
    return f"{os_name}-{arch}"


def probe_blender(target: BlenderTarget) -> BlenderInfo:
    """Ask that Blender itself: the version and Python it bundles decide everything else."""
    info = target.run(
        PROBE_CODE, timeout=120, MODULE=EXTENSION_MODULE, DEPENDENCIES_PY=str(ADDON_SOURCE / "dependencies.py")
    )
    version = tuple(info["version"])
    python = tuple(info["python"])
    if version < MIN_BLENDER:
        raise InstallError(
            f"Blender {info['version_string']} at {target.executable} is too old: the add-on is an extension and "
            f"needs Blender {'.'.join(map(str, MIN_BLENDER))} or newer. Get one from https://www.blender.org/download/ "
            "and pass it with --blender PATH."
        )
    if python[:2] != SUPPORTED_PYTHON:
        raise InstallError(
            f"Blender {info['version_string']} bundles Python {'.'.join(map(str, python))}, but the tested dependency "
            f"set needs Python {'.'.join(map(str, SUPPORTED_PYTHON))} (Blender 4.2 to 5.0). Use one of those versions."
        )
    if "probe_error" in info:
        raise InstallError(f"Blender {info['version_string']} could not report its folders: {info['probe_error']}")
    return BlenderInfo(
        target=target,
        version=version,
        version_string=info["version_string"],
        python=python,
        python_executable=info["python_executable"],
        platform_tag=platform_tag(info["system"], info["machine"]),
        scripts=Path(info["scripts"]),
        deps=Path(info["deps"]),
        pip=info["pip"],
    )


# --- Finding Blender ------------------------------------------------------------------------------------------


def usual_blender_locations(system: str, home: Path, environ: dict[str, str]) -> list[str]:
    """Glob patterns of where the official installers, Steam, snap and the tarballs put Blender."""
    if system == "Windows":
        roots = [environ.get("PROGRAMFILES", r"C:\Program Files"), environ.get("PROGRAMFILES(X86)", "")]
        patterns = []
        for root in filter(None, roots):
            patterns += [
                rf"{root}\Blender Foundation\Blender*\blender.exe",
                rf"{root}\Steam\steamapps\common\Blender\blender.exe",
            ]
        return patterns
    if system == "Darwin":
        return [
            "/Applications/Blender*.app/Contents/MacOS/Blender",
            f"{home}/Applications/Blender*.app/Contents/MacOS/Blender",
        ]
    return [
        "/usr/bin/blender",
        "/usr/local/bin/blender",
        "/snap/bin/blender",
        "/opt/blender*/blender",
        f"{home}/blender*/blender",
        f"{home}/Applications/blender*/blender",
        f"{home}/.local/share/Steam/steamapps/common/Blender/blender",
    ]


def find_blender(explicit: str | None, system: str, home: Path, environ: dict[str, str]) -> Path:
    """--blender wins, then PATH (the artist's own priority), then the usual places; several there: ask."""
    if explicit:
        path = Path(explicit).expanduser().absolute()
        if not path.is_file():
            raise InstallError(f"--blender {explicit}: no such file.")
        return path
    on_path = shutil.which("blender", path=environ.get("PATH", ""))
    if on_path:
        return Path(on_path)
    found: dict[Path, Path] = {}
    for pattern in usual_blender_locations(system, home, environ):
        for match in sorted(glob.glob(pattern)):
            if os.access(match, os.X_OK):
                found.setdefault(Path(match).resolve(), Path(match))
    if not found:
        raise InstallError(
            "Blender was not found on PATH or in the usual install locations. Install Blender 4.2 or newer "
            "from https://www.blender.org/download/ or pass its executable with --blender PATH."
        )
    if len(found) > 1:
        listing = "\n".join(f"  {path}" for path in found.values())
        raise InstallError(f"Found several Blenders; choose one with --blender PATH:\n{listing}")
    return next(iter(found.values()))


# --- Plan -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    blender: BlenderInfo
    backend: str
    requirements: list
    missing: list
    pip_command: list[str]
    wheelhouse: Path | None
    index_urls: list[str]

    def describe(self) -> str:
        lines = [
            f"Blender {self.blender.version_string} (Python {'.'.join(map(str, self.blender.python))}) at "
            f"{self.blender.target.executable}",
            f"torch build: {self.backend}",
            f"dependencies folder: {self.blender.deps}",
        ]
        if self.missing:
            lines.append(f"install {len(self.missing)} of {len(self.requirements)} packages with:")
            lines.append("  " + " ".join(self.pip_command))
        else:
            lines.append(f"all {len(self.requirements)} pinned packages already installed: pip is skipped")
        lines += [
            f"build: {self.blender.scripts / 'addons_core/bl_pkg/cli/blender_ext.py'} build --split-platforms "
            f"(blender_addon + sd_core as _vendor/sd_core) -> {DIST_FOLDER}",
            f"install + enable {EXTENSION_MODULE} ({self.blender.platform_tag} package), then verify",
        ]
        return "\n".join(lines)


def make_plan(
    blender: BlenderInfo,
    *,
    backend: str | None,
    requirements_file: Path,
    index_url: str | None,
    wheelhouse: Path | None,
    force: bool,
    machine=None,
) -> Plan:
    backend = backend or deps.choose_torch_backend(machine or deps.detect_machine())
    try:
        requirements = deps.read_requirements(requirements_file)
    except (OSError, ValueError) as error:
        raise InstallError(f"Cannot read the requirements: {error}") from error
    installed = deps.installed_distributions(blender.deps)
    missing = list(requirements) if force else deps.missing_requirements(requirements, installed)
    pip_command = deps.pip_install_command(
        blender.pip,
        deps.incoming_folder(blender.deps),
        requirements,
        CONSTRAINTS,
        backend,
        index_url=index_url,
        wheelhouse=wheelhouse,
    )
    index_urls = [] if wheelhouse else [index_url or deps.PYPI_INDEX_URL, deps.TORCH_INDEX_URLS.get(backend)]
    return Plan(blender, backend, requirements, missing, pip_command, wheelhouse, [url for url in index_urls if url])


# --- Steps ----------------------------------------------------------------------------------------------------


def free_bytes(folder: Path) -> int:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_disk_space(folder: Path, backend: str) -> None:
    needed, available = REQUIRED_FREE_BYTES[backend], free_bytes(folder)
    if available < needed:
        raise InstallError(
            f"Not enough disk space: the {backend} dependencies need about {needed / GIB:.0f} GB free at "
            f"{folder}, only {available / GIB:.1f} GB are. Free some space and run install.py again."
        )


def check_network(urls: list[str], timeout: float = 15) -> None:
    """Fail fast with one message instead of pip's minutes of retries; any HTTP answer proves the network."""
    for url in urls:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        except urllib.error.HTTPError:
            continue
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise InstallError(
                f"Cannot reach {url} ({reason}): check the internet connection or proxy, "
                "or install offline with --wheelhouse DIR."
            ) from error


def install_dependencies(plan: Plan) -> None:
    deps_folder = plan.blender.deps
    if not plan.missing:
        print(f"Dependencies: all {len(plan.requirements)} pinned packages present in {deps_folder}.")
        return
    check_disk_space(deps_folder.parent, plan.backend)
    check_network(plan.index_urls)
    incoming = deps.incoming_folder(deps_folder)
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.parent.mkdir(parents=True, exist_ok=True)
    print(f"Installing {len(plan.missing)} packages for {plan.backend} with Blender's Python (large downloads)...")
    environment = {**os.environ, "PYTHONNOUSERSITE": "1"}
    try:
        return_code = subprocess.run(plan.pip_command, env=environment).returncode
    except OSError as error:
        return_code, reason = None, str(error)
    if return_code != 0:
        shutil.rmtree(incoming, ignore_errors=True)
        detail = f"exit {return_code}; its messages are above" if return_code is not None else reason
        raise InstallError(
            f"pip could not install the dependencies ({detail}). The previous dependencies and add-on are "
            "unchanged; fix the cause (network, disk space) and run install.py again: downloads are resumed."
        )
    (incoming / deps.COMPLETE_MARKER).touch()
    if not deps.finish_pending_install(deps_folder):
        print("Dependencies staged: they replace the old ones the next time Blender starts (files were in use).")


def stage_extension(staging: Path) -> None:
    """The add-on as shipped: its own files, sd_core vendored, and the pins the repair button installs."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ADDON_SOURCE, staging, ignore=ignore)
    shutil.copytree(CORE_SOURCE, staging / deps.VENDOR_FOLDER / "sd_core", ignore=ignore)
    shutil.copy2(CONSTRAINTS, staging / deps.CONSTRAINTS_FILE)


def build_extension(blender: BlenderInfo, output: Path) -> Path:
    """Build all platform packages with Blender's own blender_ext.py; return the one for this machine."""
    builder = blender.scripts / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sd_blender_build_") as temporary:
        staging = Path(temporary) / EXTENSION_ID
        stage_extension(staging)
        built_dir = Path(temporary) / "dist"
        built_dir.mkdir()
        command = [blender.python_executable, str(builder), "build", "--split-platforms"]
        command += ["--source-dir", str(staging), "--output-dir", str(built_dir)]
        process = subprocess.run(command, capture_output=True, text=True, errors="replace")
        if process.returncode != 0:
            raise InstallError(f"Building the extension failed:\n{(process.stdout + process.stderr).strip()}")
        for package in built_dir.glob("*.zip"):
            shutil.copy2(package, output / package.name)
    suffix = "-" + blender.platform_tag.replace("-", "_") + ".zip"
    matches = sorted(output.glob(f"{EXTENSION_ID}-*{suffix}"), key=lambda path: path.stat().st_mtime)
    if not matches:
        raise InstallError(f"This platform ({blender.platform_tag}) is not supported: torch has no builds for it.")
    return matches[-1]


def extension_state(blender: BlenderInfo) -> dict:
    return blender.target.run(
        EXTENSION_STATE_CODE,
        user_preferences=True,
        MODULE=EXTENSION_MODULE,
        REPO=EXTENSION_REPO,
        EXTENSION_ID=EXTENSION_ID,
    )


def uninstall_extension(blender: BlenderInfo) -> bool:
    result = blender.target.run(
        UNINSTALL_EXTENSION_CODE,
        user_preferences=True,
        MODULE=EXTENSION_MODULE,
        REPO=EXTENSION_REPO,
        EXTENSION_ID=EXTENSION_ID,
    )
    return result["removed"]


def verify(blender: BlenderInfo, requirements: list) -> dict:
    pins = [(requirement.name, requirement.version) for requirement in requirements]
    return blender.target.run(VERIFY_CODE, user_preferences=True, MODULE=EXTENSION_MODULE, REQUIREMENTS=pins)


def install(plan: Plan) -> None:
    install_dependencies(plan)
    package = build_extension(plan.blender, DIST_FOLDER)
    print(f"Built {package.name}; installing it into Blender...")
    target = plan.blender.target
    try:
        result = target.run(
            INSTALL_EXTENSION_CODE,
            user_preferences=True,
            MODULE=EXTENSION_MODULE,
            REPO=EXTENSION_REPO,
            ZIP=str(package),
        )
        if not result["enabled"]:
            raise InstallError("Blender installed the extension but could not enable it (its register() failed).")
        report = verify(plan.blender, plan.requirements)
        if not report["enabled"] or report.get("problems") or not report.get("device"):
            problems = report.get("problems") or ["the add-on is not enabled after a restart"]
            raise InstallError("The installed add-on does not work:\n  " + "\n  ".join(problems))
    except InstallError as error:
        try:
            target.run(DISABLE_EXTENSION_CODE, user_preferences=True, MODULE=EXTENSION_MODULE)
            undo = "The add-on was disabled again; run install.py again once the cause is fixed."
        except InstallError:
            undo = "Disabling the broken add-on failed too: run install.py --uninstall."
        raise InstallError(f"{error}\n{undo}") from error
    print(f"Done: {EXTENSION_MODULE} is enabled in Blender {plan.blender.version_string}; device: {report['device']}")


def check(plan: Plan) -> bool:
    print(plan.describe().splitlines()[0])
    if plan.missing:
        print(f"Dependencies in {plan.blender.deps}: missing or wrong version:")
        print("".join(f"  {requirement.spec}\n" for requirement in plan.missing), end="")
    else:
        print(f"Dependencies in {plan.blender.deps}: all {len(plan.requirements)} pinned packages present.")
    state = extension_state(plan.blender)
    if not state["installed"]:
        print("Add-on: not installed.")
        return False
    if not state["enabled"]:
        print(f"Add-on: installed in {state['folder']} but not enabled.")
        return False
    report = verify(plan.blender, plan.requirements)
    if not report["enabled"]:
        print("Add-on: enabled in the preferences, but its register() fails when Blender starts.")
        return False
    print(f"Add-on: installed and enabled; sd_core from {report['sd_core']}")
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    print(f"Device: {report['device'] or 'unavailable'}")
    return not plan.missing and not report["problems"] and bool(report["device"])


def uninstall(blender: BlenderInfo) -> None:
    """Blender's uninstaller deletes the extension's user folder too; delete it here for a never-enabled add-on."""
    user_folder = blender.deps.parent
    had_dependencies = user_folder.exists()
    removed = uninstall_extension(blender)
    shutil.rmtree(user_folder, ignore_errors=True)
    if user_folder.exists():
        raise InstallError(f"Could not delete {user_folder}: close Blender and run install.py --uninstall again.")
    if removed or had_dependencies:
        print(f"Removed the add-on and its private dependencies ({user_folder}).")
    else:
        print("Nothing to remove: the add-on is not installed.")


# --- Command line ---------------------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--blender", metavar="PATH", help="the Blender executable to install into")
    where.add_argument("--bpy-module-python", metavar="PY", help="development/CI: a Python with the bpy module")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="report what is installed and what is missing")
    action.add_argument("--dry-run", action="store_true", help="print the plan without changing anything")
    action.add_argument("--uninstall", action="store_true", help="remove the add-on and its dependencies")
    parser.add_argument("--torch", choices=deps.TORCH_BACKENDS, help="torch build (default: detected)")
    parser.add_argument("--requirements", metavar="FILE", type=Path, default=CONSTRAINTS, help=argparse.SUPPRESS)
    parser.add_argument("--index-url", metavar="URL", help="a PyPI mirror to use instead of pypi.org")
    parser.add_argument("--wheelhouse", metavar="DIR", type=Path, help="install offline from a folder of wheels")
    parser.add_argument("--reinstall-deps", action="store_true", help="reinstall dependencies even if present")
    return parser.parse_args(argv)


def run(arguments: argparse.Namespace) -> int:
    if arguments.bpy_module_python:
        target = BlenderTarget(Path(arguments.bpy_module_python).absolute(), is_bpy_module=True)
    else:
        target = BlenderTarget(find_blender(arguments.blender, platform.system(), Path.home(), dict(os.environ)))
    blender = probe_blender(target)
    if arguments.uninstall:
        uninstall(blender)
        return 0
    if arguments.wheelhouse is not None and not arguments.wheelhouse.is_dir():
        raise InstallError(f"--wheelhouse {arguments.wheelhouse}: no such folder.")
    plan = make_plan(
        blender,
        backend=arguments.torch,
        requirements_file=arguments.requirements,
        index_url=arguments.index_url,
        wheelhouse=arguments.wheelhouse,
        force=arguments.reinstall_deps,
    )
    if arguments.dry_run:
        print(plan.describe())
        return 0
    if arguments.check:
        return 0 if check(plan) else 1
    install(plan)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_arguments(argv))
    except InstallError as error:
        print(f"install.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("install.py: interrupted; run it again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
