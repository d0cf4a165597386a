"""Data flows one way: pemn never imports the service, trainer or web stack; the
trainer never imports the service; no module of pemn or trainer imports itself
back through others (e.g. masking <-> prototype); the light modules of the core
load without torch; the benchmarks import the package ``pemn.testing``, never
``tests/``, and do not edit ``sys.path``. Checked by parsing every module's imports (at any depth,
function-level imports too)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "pemn": {"service", "trainer", "fastapi", "starlette", "uvicorn"},
    "trainer": {"service", "fastapi", "starlette", "uvicorn"},
}
# modules the store (and anything else that wants to stay small) may import
LIGHT = ["pemn", "pemn.store", "pemn.files", "pemn.retry", "pemn.content", "pemn.caches"]
# bench/bench_store.py belongs to the store's rewrite; it moves to pemn.testing with it
BENCH_NOT_YET = {"bench_store.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_below_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found under {package}/"
    bad = {str(f.relative_to(ROOT)): sorted(_imports(f) & FORBIDDEN[package]) for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (``from a.b import c`` counts as
    ``a.b.c`` when that is a module, else ``a.b``), at any depth of the file."""
    files = {_module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                    for a in node.names
                ]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: each strongly connected set of 2+ modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_cycles(package):
    assert cycles(import_graph(ROOT, package)) == []


def test_the_cycle_finder_finds_the_old_masking_prototype_cycle(tmp_path):
    # the shape of the cycle this test forbids: prototype imported the masked layer
    # classes (inside a function) while masking imported prototype's layer discovery
    pkg = tmp_path / "pemn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "masking.py").write_text("from pemn.prototype import maskable_layers\n")
    (pkg / "prototype.py").write_text(
        "def maskable_layers(m):\n    from pemn.masking import MaskedConv2d\n"
    )
    (pkg / "layers.py").write_text("import pemn.errors\n")
    (pkg / "errors.py").write_text("")
    assert cycles(import_graph(tmp_path, "pemn")) == [["pemn.masking", "pemn.prototype"]]


def test_light_modules_load_without_torch():
    code = f"import sys\nfor m in {LIGHT!r}: __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_benchmarks_take_their_fixtures_from_pemn_testing():
    bad = {}
    for f in sorted((ROOT / "bench").glob("*.py")):
        if f.name in BENCH_NOT_YET:
            continue
        problems = sorted(_imports(f) & {"tests"})
        if "sys.path.insert" in f.read_text():
            problems.append("sys.path.insert")
        if problems:
            bad[f.name] = problems
    assert bad == {}
