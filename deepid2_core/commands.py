"""What each `deepid2` command does with its parsed arguments (cli.py holds the
argparse tree and binds each command to its handler here): check them before
any work (checks.py), then call the function that does the work, imported
only then so that a command loads what it uses."""

import os
import sys

from . import checks



def cmd_synth(args):
    checks.synth_args(args)
    from .synth import make_dataset
    stats = make_dataset(args.out, args.identities, args.images_per_identity, args.seed)
    print(f"wrote {stats['images']} images of {stats['identities']} identities "
          f"({stats['bytes'] / 1e6:.1f} MB) to {args.out}")


def cmd_train(args):
    """One path for a plain run, --micro-batches and MPI ranks (mpiexec -n N
    deepid2 train ...): the patch spec and the config, every setting checked
    before any work; training/train_deepid2.py does the rest."""
    from dataclasses import replace
    from .face.inputs import LayoutPatch, PatchSpec
    from .training.augment import AugmentConfig
    from .training.deepid2 import TrainConfig
    from .training.train_deepid2 import train_deepid2_main
    checks.train_args(args)
    if args.layout:
        if args.patch is None:
            raise ValueError("--layout needs --patch NAME_OR_INDEX (e.g. 105 or left_eye@1/gray)")
        spec = LayoutPatch(args.layout, args.patch, args.landmarks, args.lighting)
    elif args.patch is not None:
        raise ValueError("--patch needs --layout deepid2|deepid")
    else:
        spec = PatchSpec(lighting=args.lighting)
    strength = 1.0 if args.augment_strength is None else args.augment_strength
    cfg = TrainConfig(epochs=args.epochs, batch=args.batch, lr=args.lr, lam=args.lam,
                      ident_weight=args.ident_weight, verif=args.verif, margin=args.margin,
                      learn_margin=args.learn_margin, same_share=args.same_share,
                      warmup_steps=args.warmup_steps, val_fraction=args.val_fraction,
                      seed=args.seed,
                      augment=AugmentConfig().scaled(strength) if args.augment else None)
    if cfg.augment is not None:   # the cache keeps the surround the augmentation samples
        spec = replace(spec, margin=cfg.augment.margin(spec.height, spec.width))
    state = train_deepid2_main(args.data, args.out, spec, cfg, backend=args.backend,
                               resume=args.resume, cache_dir=args.cache,
                               micro_batches=args.micro_batches,
                               deterministic=args.deterministic, dist=args.dist)
    return 130 if state is None else 0


def cmd_train_landmarks(args):
    from .training.landmarks import train_landmarks_main
    aug = {k: getattr(args, k) for k in ("shift", "scale", "rotate", "fallback_share",
                                         "central_scale", "target_stats")
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
    from .training.cascade import train_cascade_main
    cmd = (f"deepid2 train-landmark-cascade --data {args.data} --out {args.out}"
           + (f" --level1 {args.level1}" if args.level1 else "")
           + f" --levels {args.levels} --epochs {args.epochs} --seed {args.seed} --batch "
             f"{args.batch} --lr {args.lr}"
           + (" --displace " + " ".join(str(v) for v in args.displace) if args.displace else "")
           + "".join(f" --{k} {getattr(args, k)}" for k in ("scale", "rotate")
                     if getattr(args, k) is not None))
    levels = list(range(2, args.levels + 1))
    if args.displace and len(args.displace) != len(levels):
        raise ValueError(f"--displace needs one value per level ({len(levels)})")
    displace = dict(zip(levels, args.displace)) if args.displace else None
    try:
        s = train_cascade_main(args.data, args.out, level1=args.level1, levels=levels,
                               epochs=args.epochs, seed=args.seed, batch=args.batch, lr=args.lr,
                               displace=displace, scale=args.scale, rotate=args.rotate,
                               resume=args.resume, cache_dir=args.cache, command=cmd)
    except KeyboardInterrupt:
        print("\ninterrupted: continue with --resume", file=sys.stderr)
        return 130
    line = (f"model {os.path.join(args.out, 'landmarks.safetensors')}; held-out NME "
            + " -> ".join(f"{100 * r['nme']:.2f}%" for r in s["val"]))
    if "test" in s:
        line += f"; test NME {100 * s['test']['nme']:.2f}%"
    print(line)
    return 0


def cmd_eval_landmarks(args):
    checks.eval_landmarks_args(args)
    if args.yunet:
        from .face.detect import YuNetDetector
        YuNetDetector(args.yunet)  # a file that is not a YuNet model: one line, before the work
    import json
    from .face.landmarks import load_landmark_model
    from .training.landmark_eval import evaluate, evaluate_yunet, summarise
    from .training.mtfl import TEST_LIST, read_mtfl
    model = load_landmark_model(args.model, flip_average=not args.no_flip_average,
                                levels=args.levels)
    res = {"ours": evaluate(model, args.data, detector=args.detector, limit=args.limit,
                            progress=True)}
    if args.yunet:
        res["yunet"] = evaluate_yunet(args.data, args.yunet, limit=args.limit)
        # ours on the same images as YuNet's figure: those it found a face in
        missed = set(res["yunet"]["missed"]) | set(res["ours"]["skipped"])
        rels = [rel for rel, _ in read_mtfl(args.data, TEST_LIST)[:args.limit]
                if rel not in res["ours"]["skipped"]]
        res["ours_on_yunet_images"] = summarise(
            [e for rel, e in zip(rels, res["ours"]["errors"]) if rel not in missed])
    for name, r in res.items():
        print(name, json.dumps({k: v for k, v in r.items()
                                if k not in ("errors", "missed", "skipped")}, indent=1))
    if args.json:                     # whole or absent, never half-written
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f)
        os.replace(tmp, args.json)
    return 0


def cmd_align(args):
    from .face.pipeline import align_main
    try:
        align_main(args.in_dir, args.out_dir, detector=args.detector, model=args.model,
                   size=args.size, all_faces=args.all_faces, workers=args.workers,
                   central_fallback=args.central_fallback,
                   landmark_model=args.landmark_model, pick=args.pick)
    except KeyboardInterrupt:
        print("\ninterrupted: the aligned files and landmarks.csv list the images done so "
              "far, whole; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def cmd_demo(args):
    checks.positive_int(args.epochs, "--epochs")
    from .demo import run_demo
    result = run_demo(args.out, seed=args.seed, epochs=args.epochs, backend=args.backend)
    return 0 if result["accuracy"] >= 0.9 else 1


def cmd_fit_verifier(args):
    checks.fit_verifier_args(args)
    from .verifier.commands import fit_verifier_main
    fit_verifier_main(args.nets, args.data, args.out, pca=args.pca,
                      n_pairs=args.pairs, seed=args.seed, backend=args.backend,
                      cache_dir=args.cache, em_iters=args.em_iters, em_tol=args.em_tol)
    return 0


def cmd_verify(args):
    checks.verify_args(args)
    if args.pairs is not None:
        if args.image_a is not None:
            raise ValueError("give two images A B or --pairs FILE, not both")
        checks.existing_file(args.pairs, "--pairs", "file of image pairs")
        from .verifier.commands import verify_pairs_main
        _, failed = verify_pairs_main(args.pairs, model=args.model, aligned=args.aligned,
                                      pick=args.pick)
        return 2 if failed else 0
    if args.image_b is None:
        raise ValueError("give two images A B (or --pairs FILE)")
    from .face_commands import verify_main
    verify_main(args.image_a, args.image_b, model=args.model, aligned=args.aligned,
                pick=args.pick)
    return 0


def cmd_enroll(args):
    checks.enroll_args(args)
    from .face_commands import enroll_main
    enroll_main(args.folder, args.gallery, model=args.model, aligned=args.aligned,
                pick=args.pick)
    return 0


def cmd_identify(args):
    checks.identify_args(args)
    from .face_commands import identify_main
    _, failed = identify_main(args.images, args.gallery, model=args.model, top=args.top,
                              aligned=args.aligned, pick=args.pick)
    return 2 if failed else 0


def cmd_eval_lfw(args):
    checks.eval_lfw_args(args)
    from .verifier.commands import eval_lfw_main
    eval_lfw_main(args.lfw, args.pairs, model=args.model, out=args.out, folds=args.folds,
                  unaligned=args.unaligned)
    return 0


def cmd_eval_ident(args):
    checks.eval_ident_args(args)
    from .verifier.ident_eval import eval_ident_main
    eval_ident_main(args.data, model=args.model, pairs=args.pairs, folds=args.folds,
                    known_fraction=args.known_fraction, seed=args.seed, far=args.far,
                    out=args.out)
    return 0
