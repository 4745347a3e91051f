"""After `pip install .`, the repository root's deepid2_core (no _cpu built there)
shadows the installed one: the ImportError says so rather than blaming the build."""
import os
import shutil
import subprocess
import sys
import sysconfig

import deepid2_core

IMPORT_CPU = "import deepid2_core.backends.cpu"


# numpy's folder; -S: no .pth files, so no editable install's finder supplies _cpu
LIBS = sysconfig.get_paths()["purelib"]


def _import_error(tmp_path, path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*path, LIBS]))}
    r = subprocess.run([sys.executable, "-S", "-c", IMPORT_CPU], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0, r.stdout
    return r.stderr.strip().splitlines()[-1]


def test_source_tree_shadowing_an_installed_package_is_named(tmp_path):
    # the source tree: the package's Python files, no extension
    src = tmp_path / "repo"
    shutil.copytree(os.path.dirname(deepid2_core.__file__), src / "deepid2_core",
                    ignore=shutil.ignore_patterns("_cpu*", "__pycache__", "*.safetensors",
                                                  "*.onnx", "*.so"))
    if not os.path.isdir(os.path.join(LIBS, "deepid2_core")):   # no regular install here
        assert _import_error(tmp_path, [src]).endswith("(needs a C++17 compiler with OpenMP)")
    # the installed package after it on sys.path: only the built extension's name matters
    site = tmp_path / "site" / "deepid2_core"
    site.mkdir(parents=True)
    (site / ("_cpu" + sysconfig.get_config_var("EXT_SUFFIX"))).write_bytes(b"")
    line = _import_error(tmp_path, [src, site.parent])
    assert f"the deepid2_core imported from {src / 'deepid2_core'} is the source tree, which " \
           f"shadows the installed package" in line, line
    assert "pip install -e ." in line and "not built" not in line
