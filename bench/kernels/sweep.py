#!/usr/bin/env python3
"""The autotuning sweep: every bench/kernels/ script in one process (one
backend, one oracle a shape), within a time budget; writes the fastest
correct variant of every case to the tuning file, and the picks as JSON.

    python bench/kernels/sweep.py --budget 240 --batches 512 2048 128
    python bench/kernels/sweep.py --emu --batches 2 --tuning /tmp/t.json   # CI-sized

Families run in the order of --families (default: the costliest ops of a
training step first). Out of budget, the sweep stops where it is and keeps
the picks written so far (the backend falls back to its heuristics for the
shapes it did not reach). Exit 1 if any variant disagrees with the oracle.
"""
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

FAMILIES = ("lsconv_dw", "lsconv_dx", "lsconv_fwd", "sgd", "maxpool", "dense", "loss")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    fams, json_out = list(FAMILIES), None
    if "--families" in argv:
        i = argv.index("--families")
        j = next((k for k in range(i + 1, len(argv)) if argv[k].startswith("--")), len(argv))
        fams, argv = argv[i + 1:j], argv[:i] + argv[j:]
        bad = [f for f in fams if f not in FAMILIES]
        if bad or not fams:
            print(f"sweep: --families takes some of {', '.join(FAMILIES)}; got {bad or 'none'}",
                  file=sys.stderr)
            return 2
    if "--json" in argv:
        i = argv.index("--json")
        if i + 1 >= len(argv):
            print("sweep: --json needs a path", file=sys.stderr)
            return 2
        json_out, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    args = H.parse(__doc__.splitlines()[0], argv)
    ctx = H.context(args)
    status, picks = 0, []
    for fam in fams:
        if args.budget and time.perf_counter() - args.t0 > args.budget:
            print(f"\nsweep: budget of {args.budget:g} s spent before {fam} (and after)")
            break
        mod = importlib.import_module(fam)
        st, got = H.run(args, fam, mod.cases, ctx)
        status, picks = max(status, st), picks + got
    spent = time.perf_counter() - args.t0
    H.print_picks(f"sweep summary ({ctx.card}, {ctx.mode}; heuristic vs fastest correct "
                  f"variant, ms per call)", picks)
    print(f"sweep: {len(picks)} cases in {spent:.0f} s on {ctx.card} ({ctx.mode})"
          + (f"; picks written to {ctx.tpath}" if ctx.tpath else "; no tuning file written"))
    if json_out:
        Path(json_out).write_text(json.dumps(dict(card=ctx.card, mode=ctx.mode, seconds=spent,
                                                  tuning=str(ctx.tpath) if ctx.tpath else None,
                                                  picks=picks), indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
