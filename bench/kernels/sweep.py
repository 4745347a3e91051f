#!/usr/bin/env python3
"""The autotuning sweep: every bench/kernels/ script in one process (one
backend, one oracle a shape), within a time budget; writes the fastest
correct variant of every case to the tuning file, and the picks as JSON.

    python bench/kernels/sweep.py --budget 240 --batches 512 2048 128
    python bench/kernels/sweep.py --emu --batches 2 --tuning /tmp/t.json   # CI-sized
    python bench/kernels/sweep.py --floors "NVIDIA H200"   # every case's floor, no GPU

Batches run in the order of --batches, and within each the families in the
order of --families (default: the costliest ops of a training step first;
SGD, whose shapes do not depend on the batch, with the first batch). A
variant over 3x the best so far is timed once, not --reps times. Out of budget, the sweep stops where it is and keeps
the picks written so far (the backend falls back to its heuristics for the
shapes it did not reach). Exit 1 if any variant disagrees with the oracle.
"""
import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

# lsconv_pool last: it reruns the dx/dw picks behind the pool, the slowest to check,
# and its default (fused) already gives the composition's bits
FAMILIES = ("lsconv_dw", "lsconv_dx", "lsconv_fwd", "sgd", "maxpool", "dense", "loss",
            "lsconv_pool")
BATCHLESS = ("sgd",)


def _option(argv, name):
    """(value of `name VALUE` or None, argv without them); SystemExit(2) without a value."""
    if name not in argv:
        return None, argv
    i = argv.index(name)
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        print(f"sweep: {name} needs a value", file=sys.stderr)
        raise SystemExit(2)
    return argv[i + 1], argv[:i] + argv[i + 2:]


def floors(args, fams, card):
    """Every case's flops, bytes and their time at the card's peak (nothing runs)."""
    pk = H.peaks(card)
    if pk is None:
        print(f"sweep: no peaks known for {card!r}; known: "
              f"{', '.join(c[0] for c in H.CARDS)}", file=sys.stderr)
        return 2
    print(f"floors at the peak of {pk.label}: {pk.fp32:g} TFLOP/s fp32, {pk.gbs:g} GB/s "
          f"(the time the op's flops and minimum bytes take; the larger one bounds it)")
    print(f"  {'op':<15s} {'case':<16s} {'GFLOP':>8s} {'MB':>8s} {'compute ms':>10s} "
          f"{'memory ms':>10s}  bound")
    for fam in fams:
        for c in importlib.import_module(fam).cases(args):
            tc, tm = 1e3 * c.flops / (pk.fp32 * 1e12), 1e3 * c.bytes / (pk.gbs * 1e9)
            print(f"  {c.op:<15s} {c.label:<16s} {c.flops / 1e9:8.3f} {c.bytes / 1e6:8.2f} "
                  f"{tc:10.4f} {tm:10.4f}  {'compute' if tc > tm else 'memory'}")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    card, argv = _option(argv, "--floors")
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
    json_out, argv = _option(argv, "--json")
    args = H.parse(__doc__.splitlines()[0], argv)
    if card:
        return floors(args, fams, card)
    ctx = H.context(args)
    status, picks, batches = 0, [], H.batches(args)
    # batch after batch (the first one's picks complete before the next
    # starts); SGD's shapes do not depend on the batch: once
    todo = [(b, fam) for k, b in enumerate(batches) for fam in fams
            if not (fam in BATCHLESS and k > 0)]
    for b, fam in todo:
        if args.budget and time.perf_counter() - args.t0 > args.budget:
            print(f"\nsweep: budget of {args.budget:g} s spent before {fam} at batch {b} "
                  "(and after)")
            break
        mod = importlib.import_module(fam)
        fargs = argparse.Namespace(**dict(vars(args), batches=[b]))
        st, got = H.run(fargs, fam, mod.cases, ctx)
        if hasattr(mod, "after"):   # the family's checks beyond its variants (sgd_update_many)
            st = max(st, mod.after(fargs, ctx))
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
