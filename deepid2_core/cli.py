"""The `deepid2` command line: synth, train, train-landmarks, align, demo."""

import argparse
import os
import sys
import time

from .backends import BackendUnavailable, get_backend


def _threads_note(be):
    threads = be.max_threads() if hasattr(be, "max_threads") else None
    return f"backend {be.name}" + (f", {threads} threads" if threads else "")


def cmd_synth(args):
    from .synth import make_dataset
    stats = make_dataset(args.out, args.identities, args.images_per_identity, args.seed)
    print(f"wrote {stats} to {args.out}")


def _train_config(args):
    from .train import TrainConfig
    return TrainConfig(epochs=args.epochs, batch=args.batch, lr=args.lr, lam=args.lam,
                       verif=args.verif, margin=args.margin, learn_margin=args.learn_margin,
                       same_share=args.same_share, warmup_steps=args.warmup_steps,
                       val_fraction=args.val_fraction, seed=args.seed)


def cmd_train(args):
    from .data import PatchSpec, build_cache
    from .train import Trainer
    be = get_backend(args.backend)
    if not args.resume and os.path.exists(os.path.join(args.out, "checkpoint.safetensors")):
        raise ValueError(f"{args.out} already holds a training run: pass --resume to continue "
                         f"it, or choose another --out")
    cache_dir = args.cache or os.path.join(args.out, "cache")
    cache = build_cache(args.data, cache_dir, PatchSpec())
    print(f"{len(cache.labels)} images of {len(cache.identities)} identities "
          f"({len(cache.skipped)} skipped); {_threads_note(be)}")
    trainer = Trainer(cache, args.out, _train_config(args), be)
    try:
        state = trainer.run(resume=args.resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last checkpoint in {args.out} is whole; "
              f"continue with --resume", file=sys.stderr)
        return 130
    print(f"best epoch {state['best_epoch']} (validation accuracy {state['best_val']:.4f}); "
          f"model {os.path.join(args.out, 'best.safetensors')}, "
          f"log {os.path.join(args.out, 'log.jsonl')}, plot {os.path.join(args.out, 'curves.png')}")
    return 0


def cmd_train_landmarks(args):
    from .landmarks import train_landmarks_main
    cmd = (f"deepid2 train-landmarks --data {args.data} --out {args.out} --epochs {args.epochs} "
           f"--seed {args.seed} --batch {args.batch} --lr {args.lr} --detector {args.detector}")
    try:
        summary = train_landmarks_main(args.data, args.out, epochs=args.epochs, seed=args.seed,
                                       batch=args.batch, lr=args.lr, detector=args.detector,
                                       resume=args.resume, cache_dir=args.cache,
                                       backend=args.backend, command=cmd)
    except KeyboardInterrupt:
        print("\ninterrupted: continue with --resume", file=sys.stderr)
        return 130
    line = f"model {os.path.join(args.out, 'landmarks.safetensors')}"
    if "test" in summary:
        line += f"; test NME {100 * summary['test']['nme']:.2f}%"
    print(line)
    return 0


def cmd_align(args):
    from .face.pipeline import align_main
    try:
        align_main(args.in_dir, args.out_dir, detector=args.detector, model=args.model,
                   size=args.size, all_faces=args.all_faces, workers=args.workers,
                   central_fallback=args.central_fallback,
                   landmark_model=args.landmark_model)
    except KeyboardInterrupt:
        print("\ninterrupted: the aligned files written so far are whole; run again to "
              "finish (landmarks.csv is written at the end)", file=sys.stderr)
        return 130
    return 0


def cmd_demo(args):
    from .demo import run_demo
    result = run_demo(args.out, seed=args.seed, seconds=args.seconds, backend=args.backend)
    return 0 if result["accuracy"] >= 0.9 else 1


def build_parser():
    p = argparse.ArgumentParser(prog="deepid2", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="draw procedural faces into LFW-style identity folders")
    s.add_argument("out")
    s.add_argument("--identities", type=int, default=100)
    s.add_argument("--images-per-identity", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train a DeepID2 network (Algorithm 1)")
    t.add_argument("--data", required=True, help="folder of identity folders (root/<id>/*.jpg)")
    t.add_argument("--out", required=True, help="run folder: checkpoints, log, plot")
    t.add_argument("--cache", help="patch cache folder (default OUT/cache)")
    t.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--lambda", dest="lam", type=float, default=0.05)
    t.add_argument("--verif", default="l2", choices=["l2", "l2_pos", "l1", "cosine"])
    t.add_argument("--margin", type=float, default=1.0)
    t.add_argument("--learn-margin", action="store_true")
    t.add_argument("--same-share", type=float, default=0.5)
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true")
    t.set_defaults(func=cmd_train)

    lm = sub.add_parser("train-landmarks", help="train the 5-point landmark ConvNet on MTFL")
    lm.add_argument("--data", required=True,
                    help="folder with new_training.txt / new_testing.txt (MTFL)")
    lm.add_argument("--out", required=True)
    lm.add_argument("--epochs", type=int, default=120)
    lm.add_argument("--seed", type=int, default=0)
    lm.add_argument("--batch", type=int, default=64)
    lm.add_argument("--lr", type=float, default=0.02)
    lm.add_argument("--detector", default="auto", choices=["auto", "haar", "central"])
    lm.add_argument("--cache")
    lm.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    lm.add_argument("--resume", action="store_true")
    lm.set_defaults(func=cmd_train_landmarks)

    al = sub.add_parser("align", help="detect, find landmarks and align every face of a "
                                      "folder; write OUT_DIR/landmarks.csv")
    al.add_argument("in_dir", metavar="IN_DIR",
                    help="folder of identity folders (root/<id>/*.jpg) or a flat folder of images")
    al.add_argument("out_dir", metavar="OUT_DIR",
                    help="aligned faces under the same relative paths, and landmarks.csv")
    al.add_argument("--detector", default="haar", choices=["haar", "yunet"],
                    help="haar: Haar boxes + the landmark ConvNet (default); yunet: YuNet's "
                         "boxes and its own landmarks (needs --model)")
    al.add_argument("--model", help="the YuNet ONNX model, with --detector yunet")
    al.add_argument("--size", default="250", help="aligned size, N or WxH (default 250)")
    al.add_argument("--all-faces", action="store_true",
                    help="every face, written as NAME_1.jpg, NAME_2.jpg, ... largest first "
                         "(default: the largest face only, as NAME.jpg)")
    al.add_argument("--central-fallback", action="store_true",
                    help="haar: align images without a detection on the fixed central box "
                         "(still listed as no_face)")
    al.add_argument("--landmark-model", help="landmark model file (default: the shipped one)")
    al.add_argument("--workers", type=int, help="threads (default: the usable CPUs, at most 8)")
    al.set_defaults(func=cmd_align)

    d = sub.add_parser("demo", help="synthetic identities: train, then verify unseen ones")
    d.add_argument("--out", default=os.path.join(os.getcwd(), "deepid2-demo"))
    d.add_argument("--seconds", type=float, default=120.0, help="training time budget")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        rc = args.func(args) or 0
    except (ValueError, OSError, BackendUnavailable) as e:
        print(f"deepid2 {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.command != "synth":
        print(f"done in {time.perf_counter() - t0:.1f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
