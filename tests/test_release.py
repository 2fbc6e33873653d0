"""The release as the Comfy Registry and pip meet it.

- The archive: the file list comfy-cli's `comfy node pack` / `comfy node publish` would zip (git-tracked files minus
  .comfyignore, plus [tool.comfy] includes walked on disk), built here from the working tree as if it were committed,
  holds the pack and nothing else.
- The Registry fields of pyproject.toml are complete and in the formats comfy-cli accepts.
- requirements.txt and [project] dependencies declare every package the pack's code imports; the `train` extra holds
  what only the command-line trainer needs.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import pathspec
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from PIL import Image

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
COMFY = PYPROJECT["tool"]["comfy"]

# What ComfyUI must find in the archive: its entry point, the nodes, the frontend extension, the templates, the
# shipped miniature weights, and what the Registry page and pip read.
PACK_ENTRIES = {
    "__init__.py",
    "nodes",
    "bolid_core",
    "web",
    "workflows",
    "miniature_models",
    "docs",
    "README.md",
    "LICENSE",
    "pyproject.toml",
    "requirements.txt",
    "requirements-train.txt",
    "examples",  # the README's headless API client (stdlib only)
}
DEV_ENTRIES = {"tests", "benchmarks", "bolid_dev", "scripts", ".ci", "test-output", ".venv", ".git"}
MAX_FILE_BYTES = 2 * 1024 * 1024  # outside the shipped model weights
MAX_ARCHIVE_BYTES = 32 * 1024 * 1024

# Modules the user's ComfyUI provides: its own top-level modules (absolute `nodes` is ComfyUI's nodes.py; the pack
# reaches its own `nodes` package only relatively) and the torch build it was installed with.
COMFYUI_MODULES = {"comfy", "comfy_api", "folder_paths", "server", "nodes"}
COMFYUI_REQUIREMENTS = {"torch", "torchvision"}
# onnxruntime or onnxruntime-gpu: the user's choice for their hardware (installing one over the other breaks it).
USER_CHOSEN = {"onnxruntime"}
# Distributions that provide the same import under another build name.
ALTERNATIVE_BUILDS = {
    "cv2": {"opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"},
}
# Imports of the train extra inside modules ComfyUI loads, each confined to functions the nodes never call: the
# miniature base is built and converted by the benchmark; the loader node reads it with read_base.
TRAIN_ONLY_FUNCTIONS = {
    ("bolid_core/miniature/models.py", "diffusers"): {
        "sdxl_scheduler",
        "build_sdxl_folder",
        "_load_parts",
        "import_base",
    },
}

# comfy-cli's version check of requires-comfyui, each comma-separated part: [operator]major.minor.patch[-suffix].
REGISTRY_VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")
SUBPROCESS_MODULES = {"subprocess", "pty", "multiprocessing"}
SUBPROCESS_CALLS = re.compile(
    r"^(os\.(system|popen|fork\w*|exec\w*|spawn\w*|posix_spawn\w*)|asyncio\.create_subprocess_\w+)$"
)


# --- the archive, as comfy-cli builds it ------------------------------------------------------------------------


def comfyignore_spec(root: Path) -> pathspec.PathSpec | None:
    ignore_file = root / ".comfyignore"
    if not ignore_file.is_file():
        return None
    lines = [line.strip() for line in ignore_file.read_text(encoding="utf-8").splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    if not patterns:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # comfy-cli asks for "gitwildmatch" by that name
        return pathspec.PathSpec.from_lines("gitwildmatch", patterns)


def git_files(root: Path) -> list[str]:
    """Tracked files plus the untracked ones .gitignore lets through: the tree as it would be committed."""
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted({line for line in listing.splitlines() if line.strip()})


def archive_files(root: Path, includes: Iterable[str], *, with_git: bool = True) -> dict[str, int]:
    """Path -> size of every file comfy-cli would zip from `root`; without git it walks the whole folder."""
    include_prefixes = [os.path.normpath(entry.lstrip("/")).replace("\\", "/") for entry in includes]
    spec = comfyignore_spec(root)

    def forced(path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + "/") for prefix in include_prefixes if prefix)

    def ignored(path: str) -> bool:
        return spec is not None and not forced(path) and spec.match_file(path)

    def walk(top: Path) -> Iterable[str]:
        for folder, folders, files in os.walk(top):
            folders[:] = [
                d for d in folders if d != ".git" and not ignored((Path(folder) / d).relative_to(root).as_posix())
            ]
            yield from ((Path(folder) / name).relative_to(root).as_posix() for name in files)

    candidates = git_files(root) if with_git else walk(root)
    archive = {
        path: (root / path).stat().st_size for path in candidates if not ignored(path) and (root / path).is_file()
    }
    for entry in include_prefixes:
        target = root / entry
        if target.is_file():
            archive.setdefault(entry, target.stat().st_size)
        elif target.is_dir():
            archive.update({path: (root / path).stat().st_size for path in walk(target) if not ignored(path)})
    return archive


@pytest.fixture(scope="module")
def archive() -> dict[str, int]:
    return archive_files(REPO, COMFY.get("includes", []))


def top_entry(path: str) -> str:
    return path.split("/", 1)[0]


def test_the_archive_holds_only_the_pack(archive: dict[str, int], test_output: Path) -> None:
    (test_output / "release_archive_files.txt").write_text("".join(f"{p}\t{archive[p]}\n" for p in sorted(archive)))
    strays = sorted(path for path in archive if top_entry(path) not in PACK_ENTRIES)
    assert not strays, f"Outside the pack, add them to .comfyignore: {strays}"
    caches = sorted(path for path in archive if "__pycache__" in path.split("/") or path.endswith(".pyc"))
    assert not caches, f"Bytecode in the archive (an `includes` entry walks it in): {caches[:5]}"
    assert not {top_entry(path) for path in archive} & DEV_ENTRIES


@pytest.mark.parametrize("with_git", [True, False], ids=["git", "no-git"])
def test_dev_folders_stay_out_with_and_without_git(with_git: bool) -> None:
    # Without git, comfy-cli zips the whole folder minus .comfyignore: venvs and caches included unless it names them.
    files = archive_files(REPO, COMFY.get("includes", []), with_git=with_git)
    leaked = sorted({top_entry(path) for path in files} - PACK_ENTRIES)
    assert not leaked, f"In the archive without being part of the pack: {leaked}; add them to .comfyignore"


def test_the_archive_holds_the_whole_pack(archive: dict[str, int]) -> None:
    expected = {
        path
        for path in git_files(REPO)
        if (REPO / path).is_file()
        and (
            path in {"__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt"}
            or re.match(r"^(nodes|bolid_core)/.*\.py$", path)
            or re.match(r"^web/.*\.(js|css)$", path)
            or re.match(r"^workflows/.*\.(json|jpg)$", path)
            or path.startswith("miniature_models/")
        )
    }
    missing = sorted(expected - archive.keys())
    assert not missing, f"Part of the pack but not in the archive: {missing}"
    assert any(path.startswith("workflows/api/") for path in archive)


def test_the_archive_is_small(archive: dict[str, int]) -> None:
    large = {p: size for p, size in archive.items() if size > MAX_FILE_BYTES and not p.startswith("miniature_models/")}
    assert not large, f"Files over {MAX_FILE_BYTES} bytes: {large}; leave pictures out with .comfyignore"
    assert sum(archive.values()) < MAX_ARCHIVE_BYTES


def test_includes_force_include_nothing_git_tracks() -> None:
    # comfy-cli walks an `includes` folder on disk with .comfyignore switched off inside it: a tracked folder there
    # would bring its __pycache__ and every untracked file.
    tracked_tops = {top_entry(path) for path in git_files(REPO)}
    overlapping = [entry for entry in COMFY.get("includes", []) if top_entry(entry.strip("/")) in tracked_tops]
    assert not overlapping, f"[tool.comfy] includes names folders git already tracks: {overlapping}"


def archived_python(archive: dict[str, int]) -> dict[str, ast.Module]:
    return {
        path: ast.parse((REPO / path).read_text(encoding="utf-8"), path) for path in archive if path.endswith(".py")
    }


@pytest.fixture(scope="module")
def pack_code(archive: dict[str, int]) -> dict[str, ast.Module]:
    return archived_python(archive)


def test_no_archived_code_starts_processes(pack_code: dict[str, ast.Module]) -> None:
    found = []
    for path, tree in pack_code.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                names = [f"{node.value.id}.{node.attr}"]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] in SUBPROCESS_MODULES or SUBPROCESS_CALLS.match(n)]
            found += [f"{path}:{node.lineno} {name}" for name in bad]
    assert not found, f"The Registry's scanner flags code that starts processes: {found}"


def module_path(module: str) -> str | None:
    base = module.replace(".", "/")
    for candidate in (f"{base}/__init__.py", f"{base}.py"):
        if (REPO / candidate).is_file():
            return candidate
    return None


def imported_pack_modules(path: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The pack's own modules an import statement in `path` names (relative imports resolved)."""
    if isinstance(node, ast.Import) or node.level == 0:
        return []
    package = path.rsplit("/", 1)[0].split("/") if "/" in path else []
    anchor = package[: len(package) - (node.level - 1)]
    base = ".".join([*anchor, *([node.module] if node.module else [])])
    names = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
    # `from .x import y`: y may be a module of package x or a name inside it.
    return [name for name in names if module_path(name)] or ([base] if base else [])


def test_every_relative_import_of_the_archive_stays_inside_it(
    archive: dict[str, int], pack_code: dict[str, ast.Module]
) -> None:
    outside = []
    for path, tree in pack_code.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for module in imported_pack_modules(path, node):
                    target = module_path(module)
                    if target is None or target not in archive:
                        outside.append(f"{path}:{node.lineno} -> {module}")
            if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                outside += [f"{path}:{node.lineno} -> {n}" for n in names if n and top_entry(n) in DEV_ENTRIES]
    assert not outside, f"Imports of modules the archive lacks: {outside}"


# --- Registry fields --------------------------------------------------------------------------------------------


def test_registry_fields_are_complete() -> None:
    project = PYPROJECT["project"]
    name = project["name"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,98}", name) and not re.search(r"[._-]{2}", name), name
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"].strip()
    assert (REPO / project["license"]["file"]).is_file()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", project["urls"]["Repository"])
    for field in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert str(COMFY.get(field, "")).strip(), f"[tool.comfy] {field} is empty"
    assert re.fullmatch(r"[a-z0-9-]+", COMFY["PublisherId"])


def test_the_icon_is_a_square_png_served_from_the_repository() -> None:
    repository = PYPROJECT["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    match = re.fullmatch(rf"https://raw\.githubusercontent\.com/{re.escape(repository)}/([\w.-]+)/(.+)", COMFY["Icon"])
    assert match, f"Icon {COMFY['Icon']} is not a raw URL in {repository}"
    icon = match.group(2)
    assert icon in git_files(REPO), f"{icon} is missing or ignored by git: the URL would not resolve"
    with Image.open(REPO / icon) as image:
        assert image.format == "PNG"
        assert image.width == image.height <= 400


def test_requires_comfyui_starts_at_the_comfyui_the_suite_runs() -> None:
    requirement = COMFY["requires-comfyui"]
    assert all(REGISTRY_VERSION_PART.match(part.strip()) for part in requirement.split(",")), requirement
    tested = re.findall(r"comfyui-(\d+\.\d+\.\d+)", (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8"))
    assert tested and len(set(tested)) == 1, "scripts/setup.sh should name the one ComfyUI version it installs"
    specifier = SpecifierSet(requirement)
    assert Version(tested[0]) in specifier
    assert Version(tested[0]) == min((Version(s.version) for s in specifier if ">" in s.operator), default=None)


def test_the_comfyui_under_test_satisfies_requires_comfyui() -> None:
    from bolid_dev.runtime import RuntimeSetupError, comfyui_dir

    try:
        comfy = comfyui_dir()
    except RuntimeSetupError as error:
        pytest.skip(str(error))
    version = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", (comfy / "comfyui_version.py").read_text())
    assert version and Version(version.group(1)) in SpecifierSet(COMFY["requires-comfyui"])
    for module in COMFYUI_MODULES:
        assert (comfy / f"{module}.py").is_file() or (comfy / module).is_dir(), module
    comfy_requirements = {
        canonicalize_name(Requirement(line).name)
        for line in (comfy / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert comfy_requirements >= COMFYUI_REQUIREMENTS


# --- declared dependencies --------------------------------------------------------------------------------------


def requirement_lines(file: str) -> list[Requirement]:
    lines = (REPO / file).read_text(encoding="utf-8").splitlines()
    return [Requirement(line.split(" #")[0].strip()) for line in lines if line.strip() and not line.startswith("#")]


def normalised(requirements: Iterable[Requirement]) -> set[str]:
    return {f"{canonicalize_name(r.name)}{r.specifier}{f';{r.marker}' if r.marker else ''}" for r in requirements}


BASE = requirement_lines("requirements.txt")
TRAIN = requirement_lines("requirements-train.txt")


def test_requirement_files_match_pyproject() -> None:
    assert normalised(BASE) == normalised(Requirement(line) for line in PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert normalised(TRAIN) == normalised(Requirement(line) for line in extras["train"])
    assert not {r.name for r in BASE} & {r.name for r in TRAIN}


def test_torch_is_left_to_comfyui() -> None:
    declared = {canonicalize_name(r.name) for r in BASE + TRAIN}
    assert not declared & (COMFYUI_REQUIREMENTS | {"torchaudio", "comfyui-frontend-package"})


def third_party_imports(trees: dict[str, ast.Module]) -> dict[str, dict[str, list[ast.AST]]]:
    """Top-level module -> file -> import statements, for every import not of the stdlib nor the pack itself."""
    found: dict[str, dict[str, list[ast.AST]]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"__future__"}:
                found.setdefault(module, {}).setdefault(path, []).append(node)
    return found


@functools.cache
def installed_providers() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def providers(module: str) -> set[str]:
    """Distributions that provide an import name: the installed metadata, known alternative builds, or its name."""
    installed = installed_providers().get(module, [])
    return (
        {canonicalize_name(d) for d in installed} | ALTERNATIVE_BUILDS.get(module, set()) | {canonicalize_name(module)}
    )


def undeclared(imports: dict[str, dict[str, list[ast.AST]]], declared: set[str]) -> list[str]:
    exempt = COMFYUI_MODULES | COMFYUI_REQUIREMENTS | USER_CHOSEN
    return sorted(
        f"{module} (in {', '.join(sorted(files))})"
        for module, files in imports.items()
        if module not in exempt and not providers(module) & declared
    )


def test_every_import_of_the_pack_is_declared(pack_code: dict[str, ast.Module]) -> None:
    declared = {canonicalize_name(r.name) for r in BASE + TRAIN}
    missing = undeclared(third_party_imports(pack_code), declared)
    assert not missing, f"Imported but declared nowhere; add to requirements.txt and pyproject.toml: {missing}"


def loaded_by_comfyui(pack_code: dict[str, ast.Module]) -> dict[str, ast.Module]:
    """The modules reachable from __init__.py through the pack's own imports, deferred ones included."""
    reached: dict[str, ast.Module] = {}
    pending = ["__init__.py"]
    while pending:
        path = pending.pop()
        if path in reached or path not in pack_code:
            continue
        reached[path] = pack_code[path]
        for node in ast.walk(pack_code[path]):
            if isinstance(node, ast.ImportFrom):
                for module in imported_pack_modules(path, node):
                    parts = module.split(".")
                    pending += [p for i in range(1, len(parts) + 1) if (p := module_path(".".join(parts[:i])))]
    return reached


def enclosing_functions(tree: ast.Module) -> dict[ast.AST, str]:
    """Node -> name of the outermost function around it (a nested helper counts as its parent)."""
    owner: dict[ast.AST, str] = {}
    for function in tree.body:
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            owner.update({node: function.name for node in ast.walk(function) if node is not function})
    return owner


def test_what_comfyui_loads_needs_only_the_base_dependencies(pack_code: dict[str, ast.Module]) -> None:
    loaded = loaded_by_comfyui(pack_code)
    assert {"nodes/__init__.py", "bolid_core/comfy/attn2.py"} <= loaded.keys()
    imports = third_party_imports(loaded)
    for (path, module), functions in TRAIN_ONLY_FUNCTIONS.items():
        statements = imports.get(module, {}).pop(path, [])
        owners = enclosing_functions(loaded[path]) if path in loaded else {}
        stray = [node.lineno for node in statements if owners.get(node) not in functions]
        assert not stray, f"{path} imports {module} outside {sorted(functions)} at lines {stray}"
        if not imports.get(module):
            imports.pop(module, None)
    missing = undeclared(imports, {canonicalize_name(r.name) for r in BASE})
    assert not missing, f"ComfyUI loads these but requirements.txt lacks them: {missing}"


def test_every_declared_package_is_imported(pack_code: dict[str, ast.Module]) -> None:
    imports = third_party_imports(pack_code)
    provided_by = {module: providers(module) for module in imports}
    for requirement in BASE + TRAIN:
        name = canonicalize_name(requirement.name)
        assert any(name in names for names in provided_by.values()), f"{name} is declared but never imported"
