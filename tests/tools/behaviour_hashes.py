"""sha256 of what short fixed-seed runs write, to show that a change of the
code's layout keeps its behaviour (issue 14): run it on two checkouts with the
same WORKDIR and compare the lines.

    python tests/tools/behaviour_hashes.py WORKDIR [--data ../shared/data]
    PYTHONPATH=/path/to/old/checkout python tests/tools/behaviour_hashes.py WORKDIR

The runs: deepid2 train on synthetic faces (serial, and --micro-batches 2),
train-landmarks for 1 epoch, train-landmark-cascade (level 2) for 1 epoch.
Files hash whole, except wall-clock fields (seconds, times, and the cache's
source fingerprint, which holds file times) and the safetensors checksum key:
safetensors hash as tensor bytes + metadata, json/jsonl as parsed values.
Paths are written into the files, so WORKDIR must be the same for both runs.
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

RUNS = ("serial", "micro", "lm", "casc")


def _drop_timings(v):
    if isinstance(v, dict):
        return {k: _drop_timings(x) for k, x in v.items()
                if not ("seconds" in k or "time" in k or k.endswith("_s")
                        or k in ("fingerprint", "sha256"))}
    if isinstance(v, list):
        return [_drop_timings(x) for x in v]
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return _drop_timings(json.loads(v))
        except ValueError:
            return v
    return v


def digest(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".safetensors"):
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        meta = header.pop("__metadata__", {})
        body = json.dumps([header, _drop_timings(meta)], sort_keys=True).encode() + data[8 + n:]
    elif path.endswith(".json"):
        body = json.dumps(_drop_timings(json.loads(data)), sort_keys=True).encode()
    elif path.endswith(".jsonl"):
        rows = [_drop_timings(json.loads(line)) for line in data.decode().splitlines() if line]
        body = json.dumps(rows, sort_keys=True).encode()
    else:
        body = data
    return hashlib.sha256(body).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", help="where the runs go (emptied first)")
    p.add_argument("--data", default=os.environ.get("DEEPID2_DATA", "../shared/data"),
                   help="the shared data folder (its mtfl80/ is used)")
    a = p.parse_args()
    w, mtfl = os.path.abspath(a.workdir), os.path.join(os.path.abspath(a.data), "mtfl80")
    if not os.path.isdir(mtfl):
        sys.exit(f"behaviour_hashes: {mtfl} is not a folder")
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cli = [sys.executable, "-m", "deepid2_core.cli"]
    train = ["train", "--data", f"{w}/synth", "--epochs", "2", "--batch", "32", "--seed", "1"]
    for args in (["synth", f"{w}/synth", "--identities", "24", "--images-per-identity", "8",
                  "--seed", "3"],
                 train + ["--out", f"{w}/serial"],
                 train + ["--out", f"{w}/micro", "--micro-batches", "2"],
                 ["train-landmarks", "--data", mtfl, "--out", f"{w}/lm", "--epochs", "1"],
                 ["train-landmark-cascade", "--data", mtfl, "--out", f"{w}/casc", "--epochs",
                  "1", "--levels", "2", "--cache", f"{w}/lm/cache"]):
        subprocess.run(cli + args, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    for run in RUNS:
        for folder, _, files in sorted(os.walk(os.path.join(w, run))):
            for name in sorted(files):
                if not name.endswith(".tmp") and name != ".lock":
                    path = os.path.join(folder, name)
                    print(digest(path), os.path.relpath(path, w))


if __name__ == "__main__":
    main()
