"""The `deepid2` command line, one argparse tree: synth, train, train-landmarks,
train-landmark-cascade, eval-landmarks, align, demo, and the verifier: fit-verifier,
verify, enroll, identify, eval-lfw, eval-ident. Each command's handler, what it
does with its arguments, is in commands.py; main() runs it."""

import argparse
import os
import sys
import time

from . import commands
from .backends import BackendUnavailable


class MaxPixelsAction(argparse.Action):
    """--max-pixels N: the image reader's pixel limit for this process."""

    def __call__(self, parser, namespace, value, option_string=None):
        from .face.image import set_max_pixels
        try:
            set_max_pixels(value)
        except ValueError as e:
            parser.error(f"{option_string}: {e}")
        setattr(namespace, self.dest, int(float(value)))


def add_pick_option(parser):
    """Which face of a photograph with several."""
    parser.add_argument("--pick", default="largest", choices=["largest", "center"],
                        help="which face of a photograph with several: the largest, or the one "
                             "nearest the image centre (LFW's convention; default: largest)")


def add_max_pixels_option(parser):
    """The reader's pixel limit option, for a command that reads images."""
    from .face.image import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV
    parser.add_argument("--max-pixels", action=MaxPixelsAction, metavar="N",
                        help="refuse images of more than N pixels, from their header, before "
                             f"decoding (default: {MAX_PIXELS_ENV} when set, else "
                             f"{DEFAULT_MAX_PIXELS})")


def _jb_default(name):
    import inspect
    from .verifier.joint_bayesian import JointBayesian
    return inspect.signature(JointBayesian.fit).parameters[name].default


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None (its help says what happens then) and a
    flag's False."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        if "default" in (action.help or ""):   # the help says it in its own words already
            return action.help
        return super()._get_help_string(action)


def _command(sub, name, help):
    """A subcommand whose --help starts with `help` and shows the defaults."""
    return sub.add_parser(name, help=help, description=help.replace("%%", "%"),
                          formatter_class=HelpFormatter)


BACKEND_HELP = "where the ops run: cpu, or gpu through CuPy"
SEED_HELP = "seed of the split, the initial weights and the batches"
RESUME_HELP = "continue the run in OUT from its last checkpoint"
MTFL_HELP = "folder with new_training.txt / new_testing.txt (MTFL)"
BOXES_HELP = ("face boxes: haar (the rule: Haar, then Haar on the padded image, else the "
              "central box), central (the central box always); auto means haar")


def _verifier_parsers(sub):
    model_help = ("verifier model file (default: the shipped "
                  "deepid2_core/models/verifier.safetensors)")
    aligned_help = "the images are faces already aligned by `deepid2 align` (no detection)"
    f = _command(sub, "fit-verifier", "fit PCA + Joint Bayesian on a trained network's "
                                      "features; write a verifier model file")
    f.add_argument("--nets", nargs="+", required=True,
                   help="the trained networks, `deepid2 train` run folders or their model "
                        "files: one whole-face network, or one per patch (`--layout L --patch "
                        "K` runs); each network's own patch is read from its file")
    f.add_argument("--data", required=True, help="identity folders of aligned faces")
    f.add_argument("--out", required=True, help="the verifier file (.safetensors)")
    f.add_argument("--pca", type=int, default=None,
                   help="PCA dimension (default: 180, or fewer where the features span fewer)")
    f.add_argument("--pairs", type=int, default=3000,
                   help="training pairs of each kind for the thresholds")
    f.add_argument("--seed", type=int, default=0, help="seed of the pairs drawn for the thresholds")
    f.add_argument("--cache", help="feature cache folder (default: no cache)")
    f.add_argument("--backend", default="cpu", choices=["cpu", "gpu"], help=BACKEND_HELP)
    f.add_argument("--em-iters", type=int, default=None,
                   help="Joint Bayesian: at most this many EM iterations (default: %d)"
                        % _jb_default("max_iter"))
    f.add_argument("--em-tol", type=float, default=None,
                   help="Joint Bayesian: stop when both covariances change by less than this "
                        "(relative Frobenius norm; default: %g)" % _jb_default("tol"))
    add_max_pixels_option(f)
    f.set_defaults(func=commands.cmd_fit_verifier)

    v = _command(sub, "verify", "are two photographs of the same person? (or, with --pairs, "
                                "many pairs)")
    v.add_argument("image_a", metavar="A", nargs="?", help="the first photograph")
    v.add_argument("image_b", metavar="B", nargs="?", help="the second photograph")
    v.add_argument("--pairs", metavar="FILE",
                   help="score every pair of FILE instead: one pair a line, two image paths "
                        "separated by whitespace, or by a tab when a path holds a space (blank "
                        "lines and # lines are skipped). Prints one tab-separated line per "
                        "pair on stdout, in order: A, B, same/different and the score, or "
                        "'error: WHY' and '-' for a pair that failed; the run goes on past a "
                        "bad pair. Exit status 0 when every pair was scored, 2 when any failed")
    v.add_argument("--model", help=model_help)
    v.add_argument("--aligned", action="store_true", help=aligned_help)
    add_pick_option(v)
    add_max_pixels_option(v)
    v.set_defaults(func=commands.cmd_verify)

    e = _command(sub, "enroll", "identity folders -> a gallery file")
    e.add_argument("folder", metavar="DIR", help="one folder of photographs per identity")
    e.add_argument("--gallery", required=True, help="gallery file to write (.npz or .safetensors)")
    e.add_argument("--model", help=model_help)
    e.add_argument("--aligned", action="store_true", help=aligned_help)
    add_pick_option(e)
    add_max_pixels_option(e)
    e.set_defaults(func=commands.cmd_enroll)

    i = _command(sub, "identify", "who is in these photographs (or unknown)?")
    i.add_argument("images", nargs="+", metavar="IMG", help="the photographs")
    i.add_argument("--gallery", required=True, help="gallery file written by `deepid2 enroll`")
    i.add_argument("--top", type=int, default=1, help="matches to list")
    i.add_argument("--model", help=model_help)
    i.add_argument("--aligned", action="store_true", help=aligned_help)
    add_pick_option(i)
    add_max_pixels_option(i)
    i.set_defaults(func=commands.cmd_identify)

    l = _command(sub, "eval-lfw", "LFW View 2: 10-fold accuracy, ROC, AUC, EER")
    l.add_argument("--lfw", required=True, help="the LFW images (aligned, or deep-funneled)")
    l.add_argument("--pairs", required=True, help="pairs.txt")
    l.add_argument("--model", help=model_help)
    l.add_argument("--out", help="folder for roc.png, roc.csv, metrics.json")
    l.add_argument("--folds", help="test only these folds, e.g. 6-10 (default: all)")
    l.add_argument("--unaligned", help="read images missing under --lfw from here")
    add_max_pixels_option(l)
    l.set_defaults(func=commands.cmd_eval_lfw)
    i = _command(sub, "eval-ident", "closed-set rank-1 and open-set DIR at FAR 1%% on "
                                    "identity folders of aligned faces")
    i.add_argument("--data", required=True, help="identity folders of aligned faces")
    i.add_argument("--model", help=model_help)
    i.add_argument("--pairs", help="with --folds: only the people of these View 2 folds")
    i.add_argument("--folds", help="e.g. 6-10 (needs --pairs)")
    i.add_argument("--known-fraction", type=float, default=0.5,
                   help="share of the people with 2+ images put in the gallery")
    i.add_argument("--far", type=float, default=0.01, help="open-set false alarm rate")
    i.add_argument("--seed", type=int, default=0, help="seed of the gallery / probe split")
    i.add_argument("--out", help="folder for identification.json (the split and results)")
    add_max_pixels_option(i)
    i.set_defaults(func=commands.cmd_eval_ident)


def _landmark_parsers(sub):
    from .training.landmark_configs import LandmarkTrainConfig, RefineTrainConfig
    lt, rt = LandmarkTrainConfig, RefineTrainConfig   # defaults of the options left unset
    lm = _command(sub, "train-landmarks", "train the 5-point landmark ConvNet on MTFL")
    lm.add_argument("--data", required=True, help=MTFL_HELP)
    lm.add_argument("--out", required=True,
                    help="run folder: landmarks.safetensors, eval.json, checkpoint, log, plot")
    lm.add_argument("--epochs", type=int, default=120, help="passes over the training images")
    lm.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    lm.add_argument("--batch", type=int, default=64, help="crops per step")
    lm.add_argument("--lr", type=float, default=0.02,
                    help="base learning rate (cosine decay to 0)")
    lm.add_argument("--detector", default="auto", choices=["auto", "haar", "central"],
                    help=BOXES_HELP)
    lm.add_argument("--cache", help="where the training cache is kept (default: OUT/cache)")
    lm.add_argument("--backend", default="cpu", choices=["cpu", "gpu"], help=BACKEND_HELP)
    lm.add_argument("--resume", action="store_true", help=RESUME_HELP)
    lm.add_argument("--shift", type=float, help="box shift jitter, a fraction of the box "
                    f"(default: {lt.shift})")
    lm.add_argument("--scale", type=float, help="box scale jitter (log-uniform 1/(1+s)..1+s; "
                    f"default: {lt.scale})")
    lm.add_argument("--rotate", type=float,
                    help=f"rotation jitter in degrees (default: {lt.rotate})")
    lm.add_argument("--fallback-share", type=float,
                    help="share of the training samples cut from the central box even where "
                         f"Haar found the face (default: {lt.fallback_share})")
    lm.add_argument("--central-scale", type=float,
                    help="scale jitter of those central-box samples (log-uniform "
                         f"1/(1+s)..1+s; default: {lt.central_scale})")
    lm.add_argument("--target-stats", choices=["crops", "augmented"],
                    help="standardise the targets by the plain crops or by augmented samples "
                         f"(default: {lt.target_stats})")
    add_max_pixels_option(lm)
    lm.set_defaults(func=commands.cmd_train_landmarks)

    lc = _command(sub, "train-landmark-cascade", "train the landmark cascade's refinement "
                                                 "levels (2, 3) on MTFL on top of a level-1 "
                                                 "model")
    lc.add_argument("--data", required=True, help=MTFL_HELP)
    lc.add_argument("--out", required=True,
                    help="run folder: landmarks.safetensors (level 1 and the levels), "
                         "eval.json, levelL/ checkpoints and logs")
    lc.add_argument("--level1", help="the level-1 model (default: the shipped one); its "
                    "held-out split is kept")
    lc.add_argument("--levels", type=int, default=3, choices=[2, 3],
                    help="the last level to train: 3 (levels 2 and 3) or 2")
    lc.add_argument("--epochs", type=int, default=30, help="passes over the training images, "
                                                           "per level")
    lc.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    lc.add_argument("--batch", type=int, default=64, help="faces per step")
    lc.add_argument("--lr", type=float, default=0.02,
                    help="base learning rate (cosine decay to 0)")
    lc.add_argument("--displace", type=float, nargs="+", metavar="S",
                    help="training displacement std of each level, in units of r "
                         "(default: 0.12 for level 2, 0.06 for level 3)")
    lc.add_argument("--scale", type=float, help="frame scale jitter (log-uniform "
                    f"1/(1+s)..1+s; default: {rt.scale})")
    lc.add_argument("--rotate", type=float,
                    help=f"frame rotation jitter in degrees (default: {rt.rotate})")
    lc.add_argument("--cache", help="where level 1's training cache is kept (default: "
                    "OUT/cache)")
    lc.add_argument("--resume", action="store_true", help=RESUME_HELP)
    add_max_pixels_option(lc)
    lc.set_defaults(func=commands.cmd_train_landmark_cascade)

    ev = _command(sub, "eval-landmarks", "NME and failure rate of a landmark model on MTFL's "
                                         "test list")
    ev.add_argument("--data", required=True, help=MTFL_HELP)
    ev.add_argument("--model", help="landmark model file or level-1 training checkpoint "
                    "(default: the shipped one)")
    ev.add_argument("--detector", default="auto", choices=["auto", "haar", "yunet", "central"],
                    help=BOXES_HELP + "; yunet: the packaged YuNet's boxes mapped to Haar's")
    ev.add_argument("--limit", type=int, help="only the first N test images (default: all)")
    ev.add_argument("--yunet", metavar="ONNX",
                    help="also evaluate this YuNet ONNX model on the same images "
                         "(and ours on the images YuNet finds)")
    ev.add_argument("--no-flip-average", action="store_true",
                    help="one pass on the crop, not the mean of the crop and its mirror")
    ev.add_argument("--levels", type=int, help="use the first N levels of the model's cascade "
                    "(1: level 1 alone; default: all it holds)")
    ev.add_argument("--json", metavar="PATH",
                    help="write every result, per-image errors included, to this JSON file")
    add_max_pixels_option(ev)
    ev.set_defaults(func=commands.cmd_eval_landmarks)


def _version():
    """The installed distribution's version; the package's own when run from a source
    tree that was never installed."""
    from importlib import metadata
    from . import __version__
    try:
        return metadata.version("deepid2")
    except metadata.PackageNotFoundError:
        return __version__


def build_parser():
    p = argparse.ArgumentParser(
        prog="deepid2", description="Face verification with DeepID2: verify, enroll and identify "
        "faces in photographs, align folders of faces, and train your own models. "
        "`deepid2 COMMAND --help` tells each command's options.")
    p.add_argument("--version", action="version", version=f"deepid2 {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = _command(sub, "synth", "draw procedural faces into LFW-style identity folders")
    s.add_argument("out", help="the folder to write: OUT/synthNNNNN/synthNNNNN_0001.jpg ...")
    s.add_argument("--identities", type=int, default=100, help="identities to draw")
    s.add_argument("--images-per-identity", type=int, default=20, help="images of each")
    s.add_argument("--seed", type=int, default=0, help="the same seed draws the same files")
    s.set_defaults(func=commands.cmd_synth)

    t = _command(sub, "train", "train a DeepID2 network (Algorithm 1)")
    t.add_argument("--data", required=True, help="folder of identity folders (root/<id>/*.jpg)")
    t.add_argument("--out", required=True, help="run folder: checkpoints, log, plot")
    t.add_argument("--cache", help="patch cache folder (default: OUT/cache)")
    t.add_argument("--backend", default="cpu", choices=["cpu", "gpu"], help=BACKEND_HELP)
    t.add_argument("--epochs", type=int, default=10, help="passes over the training images")
    t.add_argument("--batch", type=int, default=128, help="images per step, in batch / 2 pairs")
    t.add_argument("--lr", type=float, default=0.01, help="base learning rate (cosine decay to 0)")
    t.add_argument("--lambda", dest="lam", type=float, default=0.05,
                   help="weight lambda of the verification loss")
    t.add_argument("--ident-weight", type=float, default=1.0,
                   help="weight of the identification loss: ident_weight * ident + lambda * "
                        "verif (0: the verification loss alone)")
    t.add_argument("--verif", default="l2", choices=["l2", "l2_pos", "l1", "cosine"],
                   help="verification loss: l2 (the paper's: same pairs 1/2 d^2, different "
                        "1/2 max(0, m - d)^2), l2_pos (same pairs only), l1 (l2 with the L1 "
                        "distance), cosine (sigmoid of a scaled cosine)")
    t.add_argument("--margin", type=float, default=1.0,
                   help="the margin m of l2 / l2_pos / l1; cosine: the initial scale w")
    t.add_argument("--learn-margin", action="store_true",
                   help="let SGD move the margin too (clamped to at least 0.1)")
    t.add_argument("--same-share", type=float, default=0.5,
                   help="share of the pairs of a batch that are of one identity")
    t.add_argument("--warmup-steps", type=int, default=0,
                   help="first steps that train the identification loss alone")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of each identity's images held out for validation")
    t.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    t.add_argument("--resume", action="store_true", help=RESUME_HELP)
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
    t.add_argument("--augment", action="store_true",
                   help="augment every training image on the fly: random shift, zoom and "
                        "rotation, brightness, contrast and colour, some blur and JPEG "
                        "(training/augment.py; the cache keeps a margin around each patch)")
    t.add_argument("--augment-strength", type=float, metavar="S",
                   help="with --augment: scale every augmentation range by S (default 1)")
    t.add_argument("--micro-batches", type=int, help="data-parallel: cut each batch into G "
                   "micro-batches of whole pairs (default: the number of MPI ranks)")
    t.add_argument("--deterministic", action="store_true", help="data-parallel: fixed gradient "
                   "reduction order, bit-identical to 1 process with the same --micro-batches")
    t.add_argument("--dist", action="store_true", help="data-parallel path even without mpiexec")
    add_max_pixels_option(t)
    t.set_defaults(func=commands.cmd_train)

    _landmark_parsers(sub)

    al = _command(sub, "align", "detect, find landmarks and align every face of a folder; "
                                "write OUT_DIR/landmarks.csv (a re-run resumes: images already "
                                "done are skipped; symbolic links are followed)")
    al.add_argument("in_dir", metavar="IN_DIR",
                    help="folder of identity folders (root/<id>/*.jpg) or a flat folder of images")
    al.add_argument("out_dir", metavar="OUT_DIR",
                    help="aligned faces under the same relative paths, and landmarks.csv")
    al.add_argument("--detector", default="yunet", choices=["yunet", "haar"],
                    help="yunet (default): YuNet's boxes, Haar where it finds none; haar: the "
                         "Haar rule alone. The landmark ConvNet gives the points either way")
    al.add_argument("--model", help="another YuNet ONNX model than the packaged one "
                                    "(with --detector yunet)")
    al.add_argument("--size", default="250", help="aligned size, N or WxH")
    al.add_argument("--all-faces", action="store_true",
                    help="every face, written as NAME_1.jpg, NAME_2.jpg, ... in --pick order "
                         "(default: the first face only, as NAME.jpg)")
    add_pick_option(al)
    al.add_argument("--central-fallback", action="store_true",
                    help="align images where no face is found on the fixed central box "
                         "(still listed as no_face)")
    al.add_argument("--landmark-model", help="landmark model file (default: the shipped one)")
    al.add_argument("--workers", type=int, help="threads (default: the usable CPUs, at most 8)")
    add_max_pixels_option(al)
    al.set_defaults(func=commands.cmd_align)

    d = _command(sub, "demo", "synthetic identities: train, then verify unseen ones")
    d.add_argument("--out", default=os.path.join(os.getcwd(), "deepid2-demo"),
                   help="folder for the data, the run and the result")
    d.add_argument("--epochs", type=int, default=25,     # demo.EPOCHS
                   help="training epochs: a fixed number, so every machine gets the same "
                        "accuracy (only the time differs)")
    d.add_argument("--seed", type=int, default=0, help="seed of the data and the run")
    d.add_argument("--backend", default="cpu", choices=["cpu", "gpu"], help=BACKEND_HELP)
    d.set_defaults(func=commands.cmd_demo)
    _verifier_parsers(sub)
    return p


def main(argv=None):
    """Results on stdout; errors, notes and the time taken on stderr. Exit
    status 2 for a bad input (one line), 130 for Ctrl-C (one line)."""
    command = "deepid2"
    try:
        args = build_parser().parse_args(argv)
        command = f"deepid2 {args.command}"
        t0 = time.perf_counter()
        rc = args.func(args) or 0
    except (ValueError, OSError, BackendUnavailable) as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:     # a terminal's bar or ^C may hold the line: start a new one
        print(("\n" if sys.stderr.isatty() else "") + f"{command}: interrupted",
              file=sys.stderr)
        return 130
    if rc != 130 and args.command not in ("synth", "eval-lfw"):   # eval-lfw ends on its result
        print(f"done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
