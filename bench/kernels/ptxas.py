#!/usr/bin/env python3
"""What the compiler says about every kernel of kernels/*.cu: registers,
static shared memory, stack and spills, from ptxas (``nvcc --resource-usage``),
compiled as the gpu backend compiles them (NVRTC: -std=c++17, -ftz=true) for
one target (default sm_90). No GPU needed, only nvcc.

    python bench/kernels/ptxas.py                # the table, sm_90
    python bench/kernels/ptxas.py --arch sm_80 --markdown

The figures are cached by source text, nvcc version and target under
$DEEPID2_PTXAS_CACHE (default: the system temp folder), so the bench
scripts that print them per variant pay for the compile once.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def nvcc():
    return os.environ.get("NVCC") or shutil.which("nvcc")


def _compile(path, arch, tool):
    """{kernel: {regs, smem, stack, spill_st, spill_ld}} of one .cu file."""
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run([tool, f"-arch={arch}", "-std=c++17", "-ftz=true", "-c",
                            "--resource-usage", "-o", os.path.join(tmp, "k.o"), str(path)],
                           capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"nvcc failed on {path.name}: {p.stderr.strip()[-500:]}")
    out, name = {}, None
    for line in (p.stdout + p.stderr).splitlines():
        m = _ENTRY.search(line)
        if m:
            name = m.group(1)
            out[name] = dict(regs=0, smem=0, stack=0, spill_st=0, spill_ld=0)
            continue
        if name is None:
            continue
        m = _FRAME.search(line)
        if m:
            out[name].update(stack=int(m.group(1)), spill_st=int(m.group(2)),
                             spill_ld=int(m.group(3)))
        m = _USED.search(line)
        if m:
            out[name].update(regs=int(m.group(1)), smem=int(m.group(2) or 0))
    return out


def table(arch="sm_90"):
    """({kernel: figures}, note): the figures of every kernel, or ({}, why not)."""
    tool = nvcc()
    if not tool:
        return {}, "nvcc not found: no ptxas figures (set NVCC or put nvcc on PATH)"
    files = sorted(KERNELS.glob("*.cu"))
    version = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256(version.encode() + arch.encode())
    for f in [*files, *sorted(KERNELS.glob("*.cuh"))]:
        h.update(f.name.encode() + f.read_bytes())
    cache = Path(os.environ.get("DEEPID2_PTXAS_CACHE", tempfile.gettempdir()))
    path = cache / f"deepid2_ptxas_{os.getuid()}_{h.hexdigest()[:16]}.json"
    if path.exists():
        return json.loads(path.read_text()), f"ptxas {arch} (cached)"
    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
            parts = list(ex.map(lambda f: _compile(f, arch, tool), files))
    except RuntimeError as e:
        return {}, f"no ptxas figures: {e}"
    figures = {k: v for part in parts for k, v in part.items()}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(figures, sort_keys=True))
    os.replace(tmp, path)
    return figures, f"ptxas {arch}"


def render(figures, markdown=False):
    rows = [("kernel", "regs", "smem B", "stack B", "spill st/ld B")]
    rows += [(k, str(f["regs"]), str(f["smem"]), str(f["stack"]),
              f"{f['spill_st']}/{f['spill_ld']}") for k, f in sorted(figures.items())]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "| --- | ---: | ---: | ---: | ---: |")
        return "\n".join(lines)
    return "\n".join(f"{r[0]:<26s} {r[1]:>5s} {r[2]:>7s} {r[3]:>8s} {r[4]:>14s}" for r in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = ap.parse_args(argv)
    figures, note = table(args.arch)
    if not figures:
        print(f"ptxas: {note}", file=sys.stderr)
        return 2
    print(f"{note}; dynamic shared memory is set at launch (the bench tables add it)")
    print(render(figures, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
