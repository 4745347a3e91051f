"""Source scans of deepid2_core (parsed with ast, nothing imported):
- no import cycle among its modules;
- only deepid2_core/backends/ knows the device: nothing else imports cupy
  or probes a backend object with hasattr/getattr;
- no module imports an underscore name of another module (a package's own
  private submodules may be imported from inside that package);
- no file is longer than MAX_LINES: one job per file, read in one sitting.
Each scanner is also run on a planted violation, so it can fail.
"""
import ast
import textwrap
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "deepid2_core"
DEVICE_DIR = "backends"            # the one folder that may know the device
BACKEND_NAMES = {"be", "backend"}  # also *_be, *_backend, backend_*
MAX_LINES = 450


# ----------------------------------------------------------------------------
# the package's modules and their imports
def modules(root):
    """{dotted module name: path} of every .py under root (root is the package)."""
    out = {}
    for path in sorted(Path(root).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [Path(root).name, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(mods, name):
    return name in mods and mods[name].name == "__init__.py"


def _exists(root, mods, name):
    """A module of the package: a .py file, a package, or a compiled extension,
    built or not (a name its package's __init__.py does not bind can only be
    imported as a submodule)."""
    if name in mods:
        return True
    owner, last = name.rsplit(".", 1)
    return _is_package(mods, owner) and last not in _bound_names(mods[owner])


def _bound_names(path):
    """Names a module binds at its top level (defs, classes, assignments, imports)."""
    names = set()
    for node in ast.parse(Path(path).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def imports(root):
    """[(importer, target, lineno, path)], one per imported package-internal
    target: a module, or module.name for a name taken from a module. Imports
    inside functions count; relative imports are resolved."""
    root = Path(root)
    top = root.name
    mods = modules(root)
    out = []
    for mod, path in mods.items():
        pkg = mod if _is_package(mods, mod) else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == top or a.name.startswith(top + "."):
                        out.append((mod, a.name, node.lineno, path))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                if not (src == top or src.startswith(top + ".")):
                    continue
                for a in node.names:
                    out.append((mod, f"{src}.{a.name}", node.lineno, path))
    return out


def module_of(root, mods, target):
    """The module a target lives in: itself if a module, else its longest module prefix."""
    parts = target.split(".")
    for k in range(len(parts), 0, -1):
        name = ".".join(parts[:k])
        if _exists(root, mods, name):
            return name
    return None


# ----------------------------------------------------------------------------
# (a) import cycles
def module_graph(root):
    """{module: {imported module: (path, line) of the first such import}}."""
    mods = modules(root)
    graph = {m: {} for m in mods}
    for mod, target, line, path in imports(root):
        dst = module_of(root, mods, target)
        if dst in mods:
            graph[mod].setdefault(dst, (path, line))
    return graph


def strongly_connected(graph):
    """Tarjan's algorithm (iterative): the list of components, each a sorted list."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    comps.append(sorted(comp))
    return comps


def import_cycles(root):
    """One line per cycle: its modules and the imports that close it (file:line)."""
    graph = module_graph(root)
    lines = []
    for comp in strongly_connected(graph):
        if len(comp) == 1 and comp[0] not in graph[comp[0]]:
            continue
        members = set(comp)
        edges = [f"{a} -> {b} ({_where(root, *graph[a][b])})"
                 for a in comp for b in sorted(graph[a]) if b in members]
        lines.append(f"cycle among {', '.join(comp)}: " + "; ".join(edges))
    return lines


def _where(root, path, line):
    return f"{Path(root).name}/{Path(path).relative_to(root).as_posix()}:{line}"


# ----------------------------------------------------------------------------
# (b) the device outside backends/
def _is_backend_object(node):
    name = (node.id if isinstance(node, ast.Name)
            else node.attr if isinstance(node, ast.Attribute) else None)
    return name is not None and (name in BACKEND_NAMES or name.endswith(("_be", "_backend"))
                                 or name.startswith("backend_"))


def _is_cupy(name):
    return name == "cupy" or name.startswith("cupy.")


def device_leaks(root):
    """file:line and what, for every cupy import and every hasattr/getattr on a
    backend object outside root/backends/."""
    root = Path(root)
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] == DEVICE_DIR:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            what = None
            if isinstance(node, ast.Import) and any(_is_cupy(a.name) for a in node.names):
                what = "imports cupy"
            elif (isinstance(node, ast.ImportFrom) and not node.level
                  and _is_cupy(node.module or "")):
                what = f"imports from {node.module}"
            elif isinstance(node, ast.Call) and node.args:
                fn = node.func.id if isinstance(node.func, ast.Name) else (
                    node.func.attr if isinstance(node.func, ast.Attribute) else None)
                arg = node.args[0]
                if fn in ("hasattr", "getattr") and _is_backend_object(arg):
                    what = f"{fn}({ast.unparse(arg)}, ...) probes a backend"
                elif (fn in ("import_module", "__import__") and isinstance(arg, ast.Constant)
                      and isinstance(arg.value, str) and _is_cupy(arg.value)):
                    what = f"{fn}({arg.value!r})"
            if what:
                out.append(f"{_where(root, path, node.lineno)}: {what}")
    return out


# ----------------------------------------------------------------------------
# (c) private names across modules
def private_imports(root):
    """file:line for every import of an underscore name of another module (a
    private submodule of a package is fine from inside that package)."""
    root = Path(root)
    mods = modules(root)
    out = []
    for mod, target, line, path in imports(root):
        parts = target.split(".")
        for k in range(1, len(parts)):
            name = parts[k]
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                continue
            owner = ".".join(parts[:k])
            if _is_package(mods, owner) and _exists(root, mods, f"{owner}.{name}"):
                ok = mod == owner or mod.startswith(owner + ".")    # its own private module
            else:
                ok = mod == owner                                  # a module's private name
            if not ok:
                out.append(f"{_where(root, path, line)}: {mod} imports {owner}.{name}")
            break
    return out


# ----------------------------------------------------------------------------
def long_files(root, limit=MAX_LINES):
    """'path: N lines' for each .py file of root longer than limit."""
    out = []
    for path in sorted(Path(root).rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > limit:
            out.append(f"{path.relative_to(Path(root).parent)}: {n} lines")
    return out


# ----------------------------------------------------------------------------
def test_no_import_cycle():
    cycles = import_cycles(PKG)
    assert not cycles, "import cycles in deepid2_core:\n" + "\n".join(cycles)


def test_the_device_stays_in_backends():
    leaks = device_leaks(PKG)
    assert not leaks, ("only deepid2_core/backends/ may import cupy or probe a backend "
                       "(use the contract of docs/ops.md):\n" + "\n".join(leaks))


def test_no_private_imports_across_modules():
    bad = private_imports(PKG)
    assert not bad, "underscore names imported across modules:\n" + "\n".join(bad)


def test_no_file_is_longer_than_450_lines():
    long = long_files(PKG)
    assert not long, (f"files of deepid2_core over {MAX_LINES} lines (split them by job):\n"
                      + "\n".join(long))


def test_the_scan_sees_the_package():
    graph = module_graph(PKG)
    assert "deepid2_core.backends.cpu" in graph
    assert "deepid2_core.backends.cpu_batch" in graph["deepid2_core.backends.cpu"]
    assert len(graph) > 20


# ----------------------------------------------------------------------------
# the scanners on planted violations
def _tree(tmp_path, files):
    root = tmp_path / "deepid2_core"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


CLEAN = {
    "__init__.py": "from .api import load\n",
    "api.py": "from deepid2_core.util import helper\nfrom . import util\n",
    "util.py": "import numpy as np\n\ndef helper(be):\n    return be.xp\n",
    "backends/__init__.py": "",
    "backends/_src.py": "X = 1\n",
    "backends/gpu.py": ("import cupy\nfrom deepid2_core.backends import _src\n"
                        "def f(be):\n    return hasattr(be, 'x')\n"),
    "face/__init__.py": "",
    "face/a.py": "from . import b\nfrom ..util import helper\n",
    "face/b.py": "def g(args):\n    return getattr(args, 'backend', None)\n",
}


def test_scanners_pass_a_clean_tree(tmp_path):
    root = _tree(tmp_path, CLEAN)
    assert import_cycles(root) == []
    assert device_leaks(root) == []
    assert private_imports(root) == []


@pytest.mark.parametrize("files, want", [
    ({"face/b.py": "def g():\n    from .a import x\n"},            # inside a function, relative
     ["deepid2_core.face.a", "deepid2_core.face.b", "face/b.py:2", "face/a.py:1"]),
    ({"util.py": "import deepid2_core.api\n"},                      # an absolute import
     ["deepid2_core.api", "deepid2_core.util", "util.py:1"]),
    ({"face/b.py": "from deepid2_core.face import b\n"},            # a module importing itself
     ["deepid2_core.face.b"]),
])
def test_cycle_scanner_flags_a_planted_cycle(tmp_path, files, want):
    root = _tree(tmp_path, {**CLEAN, **files})
    cycles = import_cycles(root)
    assert len(cycles) == 1, cycles
    for w in want:
        assert w in cycles[0], cycles[0]


@pytest.mark.parametrize("text, want", [
    ("import cupy\n", "util.py:1: imports cupy"),
    ("def f():\n    import cupy.cuda as cc\n", "util.py:2: imports cupy"),
    ("from cupy.cuda import nccl\n", "util.py:1: imports from cupy.cuda"),
    ("import importlib\nm = importlib.import_module('cupy')\n", "util.py:2: import_module"),
    ("def f(be):\n    return hasattr(be, 'x')\n", "util.py:2: hasattr(be, ...)"),
    ("class T:\n    def f(self):\n        return getattr(self.backend, 'xp', None)\n",
     "util.py:3: getattr(self.backend, ...)"),
    ("def f(t):\n    return getattr(t.net.be, 'name', 'cpu')\n", "util.py:2: getattr(t.net.be"),
    ("def f(gpu_backend):\n    return hasattr(gpu_backend, 'x')\n", "util.py:2: hasattr"),
])
def test_device_scanner_flags_a_planted_leak(tmp_path, text, want):
    root = _tree(tmp_path, {**CLEAN, "util.py": text})
    leaks = device_leaks(root)
    assert len(leaks) == 1 and want in leaks[0], leaks


@pytest.mark.parametrize("files, want", [
    ({"face/b.py": "from .a import _private\n"}, "face/b.py:1: deepid2_core.face.b imports "
                                                 "deepid2_core.face.a._private"),
    ({"api.py": "from deepid2_core.util import _helper\n"}, "api.py:1"),
    ({"api.py": "def f():\n    from .backends._src import X\n"}, "api.py:2"),  # not its package
    ({"api.py": "import deepid2_core.backends._src\n"}, "api.py:1"),
])
def test_private_scanner_flags_a_planted_import(tmp_path, files, want):
    root = _tree(tmp_path, {**CLEAN, **files})
    bad = private_imports(root)
    assert len(bad) == 1 and want in bad[0], bad


def test_length_scanner_flags_a_planted_long_file(tmp_path):
    root = _tree(tmp_path, {"short.py": "x = 1\n" * MAX_LINES,
                            "sub/long.py": "x = 1\n" * (MAX_LINES + 1)})
    assert long_files(root) == [f"deepid2_core/sub/long.py: {MAX_LINES + 1} lines"]
