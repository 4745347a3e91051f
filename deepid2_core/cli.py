"""The `deepid2` command line: synth, train, train-landmarks, align, demo, and the
verifier: fit-verifier, verify, enroll, identify, eval-lfw, eval-ident."""

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


def _under_mpi():
    """Started by an MPI launcher? (checked without importing MPI; see dist.py)"""
    return any(k in os.environ for k in
               ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"))


def _train_config(args):
    from .train import TrainConfig
    return TrainConfig(epochs=args.epochs, batch=args.batch, lr=args.lr, lam=args.lam,
                       ident_weight=args.ident_weight, verif=args.verif, margin=args.margin,
                       learn_margin=args.learn_margin,
                       same_share=args.same_share, warmup_steps=args.warmup_steps,
                       val_fraction=args.val_fraction, seed=args.seed)


def cmd_train(args):
    if args.dist or (args.micro_batches or 1) > 1 or _under_mpi():
        from .dist import train_main  # data-parallel (mpiexec -n N deepid2 train ...)
        return train_main(args, _train_config)
    from .data import PatchSpec, build_cache
    from .train import Trainer
    be = get_backend(args.backend)
    if not args.resume and os.path.exists(os.path.join(args.out, "checkpoint.safetensors")):
        raise ValueError(f"{args.out} already holds a training run: pass --resume to continue "
                         f"it, or choose another --out")
    cache_dir = args.cache or os.path.join(args.out, "cache")
    if args.layout:
        from .data import LayoutPatch
        if args.patch is None:
            raise ValueError("--layout needs --patch NAME_OR_INDEX (e.g. 105 or left_eye@1/gray)")
        spec = LayoutPatch(args.layout, args.patch, args.landmarks, args.lighting)
    elif args.patch is not None:
        raise ValueError("--patch needs --layout deepid2|deepid")
    else:
        spec = PatchSpec(lighting=args.lighting)
    cache = build_cache(args.data, cache_dir, spec)
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
    aug = {k: getattr(args, k) for k in ("shift", "scale", "rotate", "target_stats")
           if getattr(args, k) is not None}
    cmd = (f"deepid2 train-landmarks --data {args.data} --out {args.out} --epochs {args.epochs} "
           f"--seed {args.seed} --batch {args.batch} --lr {args.lr} --detector {args.detector}"
           + "".join(f" --{k.replace('_', '-')} {v}" for k, v in aug.items()))
    try:
        summary = train_landmarks_main(args.data, args.out, epochs=args.epochs, seed=args.seed,
                                       batch=args.batch, lr=args.lr, detector=args.detector,
                                       resume=args.resume, cache_dir=args.cache,
                                       backend=args.backend, command=cmd, **aug)
    except KeyboardInterrupt:
        print("\ninterrupted: continue with --resume", file=sys.stderr)
        return 130
    line = f"model {os.path.join(args.out, 'landmarks.safetensors')}"
    if "test" in summary:
        line += f"; test NME {100 * summary['test']['nme']:.2f}%"
    print(line)
    return 0


def cmd_train_landmark_cascade(args):
    from .landmarks import cascade_command
    cmd = (f"deepid2 train-landmark-cascade --data {args.data} --out {args.out}"
           + (f" --level1 {args.level1}" if args.level1 else "")
           + f" --levels {args.levels} --epochs {args.epochs} --seed {args.seed} --batch "
             f"{args.batch} --lr {args.lr}"
           + (" --displace " + " ".join(str(v) for v in args.displace) if args.displace else "")
           + "".join(f" --{k} {getattr(args, k)}" for k in ("scale", "rotate")
                     if getattr(args, k) is not None))
    return cascade_command(args, cmd)


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


def _jb_default(name):
    import inspect
    from .verifier.joint_bayesian import JointBayesian
    return inspect.signature(JointBayesian.fit).parameters[name].default


def cmd_fit_verifier(args):
    from .verifier.commands import fit_verifier_main
    fit_verifier_main(args.nets, args.data, args.out, pca=args.pca,
                      n_pairs=args.pairs, seed=args.seed, backend=args.backend,
                      cache_dir=args.cache, em_iters=args.em_iters, em_tol=args.em_tol)
    return 0


def cmd_verify(args):
    from .verifier.commands import verify_main
    verify_main(args.image_a, args.image_b, model=args.model, aligned=args.aligned)
    return 0


def cmd_enroll(args):
    from .verifier.gallery import enroll_main
    enroll_main(args.folder, args.gallery, model=args.model, aligned=args.aligned)
    return 0


def cmd_identify(args):
    from .verifier.gallery import identify_main
    identify_main(args.images, args.gallery, model=args.model, top=args.top,
                  aligned=args.aligned)
    return 0


def cmd_eval_lfw(args):
    from .verifier.commands import eval_lfw_main
    eval_lfw_main(args.lfw, args.pairs, model=args.model, out=args.out, folds=args.folds,
                  unaligned=args.unaligned)
    return 0


def cmd_eval_ident(args):
    from .verifier.ident_eval import eval_ident_main
    eval_ident_main(args.data, model=args.model, pairs=args.pairs, folds=args.folds,
                    known_fraction=args.known_fraction, seed=args.seed, far=args.far,
                    out=args.out)
    return 0


def _verifier_parsers(sub):
    model_help = "verifier model file (default: the shipped deepid2_core/models/verifier.safetensors)"
    aligned_help = "the images are faces already aligned by `deepid2 align` (no detection)"
    f = sub.add_parser("fit-verifier", help="fit PCA + Joint Bayesian on a trained network's "
                                            "features; write a verifier model file")
    f.add_argument("--nets", nargs="+", required=True,
                   help="the trained networks, `deepid2 train` run folders or their model "
                        "files: one whole-face network, or one per patch (`--layout L --patch "
                        "K` runs); each network's own patch is read from its file")
    f.add_argument("--data", required=True, help="identity folders of aligned faces")
    f.add_argument("--out", required=True, help="the verifier file (.safetensors)")
    f.add_argument("--pca", type=int, default=180, help="PCA dimension (default 180)")
    f.add_argument("--pairs", type=int, default=3000,
                   help="training pairs of each kind for the thresholds (default 3000)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--cache", help="feature cache folder")
    f.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    f.add_argument("--em-iters", type=int, default=None,
                   help="Joint Bayesian: at most this many EM iterations (default %d)"
                        % _jb_default("max_iter"))
    f.add_argument("--em-tol", type=float, default=None,
                   help="Joint Bayesian: stop when both covariances change by less than this "
                        "(relative Frobenius norm; default %g)" % _jb_default("tol"))
    f.set_defaults(func=cmd_fit_verifier)

    v = sub.add_parser("verify", help="are two photographs of the same person?")
    v.add_argument("image_a", metavar="A")
    v.add_argument("image_b", metavar="B")
    v.add_argument("--model", help=model_help)
    v.add_argument("--aligned", action="store_true", help=aligned_help)
    v.set_defaults(func=cmd_verify)

    e = sub.add_parser("enroll", help="identity folders -> a gallery file")
    e.add_argument("folder", metavar="DIR", help="one folder of photographs per identity")
    e.add_argument("--gallery", required=True, help="gallery file to write (.npz or .safetensors)")
    e.add_argument("--model", help=model_help)
    e.add_argument("--aligned", action="store_true", help=aligned_help)
    e.set_defaults(func=cmd_enroll)

    i = sub.add_parser("identify", help="who is in these photographs (or unknown)?")
    i.add_argument("images", nargs="+", metavar="IMG")
    i.add_argument("--gallery", required=True)
    i.add_argument("--top", type=int, default=1, help="matches to list (default 1)")
    i.add_argument("--model", help=model_help)
    i.add_argument("--aligned", action="store_true", help=aligned_help)
    i.set_defaults(func=cmd_identify)

    l = sub.add_parser("eval-lfw", help="LFW View 2: 10-fold accuracy, ROC, AUC, EER")
    l.add_argument("--lfw", required=True, help="the LFW images (aligned, or deep-funneled)")
    l.add_argument("--pairs", required=True, help="pairs.txt")
    l.add_argument("--model", help=model_help)
    l.add_argument("--out", help="folder for roc.png, roc.csv, metrics.json")
    l.add_argument("--folds", help="test only these folds, e.g. 6-10 (default all)")
    l.add_argument("--unaligned", help="read images missing under --lfw from here")
    l.set_defaults(func=cmd_eval_lfw)
    i = sub.add_parser("eval-ident", help="closed-set rank-1 and open-set DIR at FAR 1%% on "
                                          "identity folders of aligned faces")
    i.add_argument("--data", required=True, help="identity folders of aligned faces")
    i.add_argument("--model", help=model_help)
    i.add_argument("--pairs", help="with --folds: only the people of these View 2 folds")
    i.add_argument("--folds", help="e.g. 6-10 (needs --pairs)")
    i.add_argument("--known-fraction", type=float, default=0.5,
                   help="share of the people with 2+ images put in the gallery (default 0.5)")
    i.add_argument("--far", type=float, default=0.01, help="open-set false alarm rate")
    i.add_argument("--seed", type=int, default=0, help="seed of the gallery / probe split")
    i.add_argument("--out", help="folder for identification.json (the split and results)")
    i.set_defaults(func=cmd_eval_ident)


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
    t.add_argument("--ident-weight", type=float, default=1.0,
                   help="weight of the identification loss: ident_weight * ident + lambda * "
                        "verif (0: the verification loss alone)")
    t.add_argument("--verif", default="l2", choices=["l2", "l2_pos", "l1", "cosine"])
    t.add_argument("--margin", type=float, default=1.0)
    t.add_argument("--learn-margin", action="store_true")
    t.add_argument("--same-share", type=float, default=0.5)
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--layout", choices=["deepid2", "deepid"],
                   help="train on one patch of this layout (faces aligned by `deepid2 align`) "
                        "instead of the fixed whole-face crop")
    t.add_argument("--patch", help="with --layout: the patch, an index or a name such as "
                                   "left_eye@1/gray (region@scale/colour)")
    t.add_argument("--landmarks", default="auto", choices=["auto", "csv", "mean"],
                   help="with --layout: landmark-centred regions on DATA/landmarks.csv's "
                        "aligned landmarks (csv), the canonical mean shape (mean), or csv "
                        "where the file exists (auto)")
    t.add_argument("--lighting", default="none", choices=["none", "hist", "clahe"],
                   help="illumination normalisation of each patch's luminance")
    t.add_argument("--micro-batches", type=int, help="data-parallel: cut each batch into G "
                   "micro-batches of whole pairs (default: the number of MPI ranks)")
    t.add_argument("--deterministic", action="store_true", help="data-parallel: fixed gradient "
                   "reduction order, bit-identical to 1 process with the same --micro-batches")
    t.add_argument("--dist", action="store_true", help="data-parallel path even without mpiexec")
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
    lm.add_argument("--shift", type=float, help="box shift jitter, a fraction of the box")
    lm.add_argument("--scale", type=float, help="box scale jitter (log-uniform 1/(1+s)..1+s)")
    lm.add_argument("--rotate", type=float, help="rotation jitter in degrees")
    lm.add_argument("--target-stats", choices=["crops", "augmented"],
                    help="standardise the targets by the plain crops or by augmented samples")
    lm.set_defaults(func=cmd_train_landmarks)

    from .landmarks import cascade_arguments
    lc = sub.add_parser("train-landmark-cascade",
                        help="train the landmark cascade's refinement levels (2, 3) on MTFL on "
                             "top of a level-1 model")
    cascade_arguments(lc)
    lc.set_defaults(func=cmd_train_landmark_cascade)

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
    _verifier_parsers(sub)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        rc = args.func(args) or 0
    except (ValueError, OSError, BackendUnavailable) as e:
        print(f"deepid2 {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.command not in ("synth", "eval-lfw"):      # eval-lfw ends on its accuracy line
        print(f"done in {time.perf_counter() - t0:.1f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
