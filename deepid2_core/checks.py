"""Argument checks the command line runs before any image is read, so a typo
costs a second, not the face work before it. Each check raises ValueError with
one line that names the option (main() prints it and exits with status 2).

The small checks (output_file, existing_file, fraction, ...) take the value and
what to call it ("--gallery"); the *_args functions check one command's
parsed arguments with them."""
import math
import os
import re

MODEL_EXTS = (".safetensors",)
GALLERY_EXTS = (".npz", ".safetensors")


def _nearest_existing(path):
    """The deepest existing folder on the way to `path` (path itself included)."""
    d = os.path.abspath(path)
    while not os.path.exists(d):
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return d


def output_file(path, exts, what):
    """A file to be written: the right extension, not a folder, and a folder
    that exists and is writable (it is not created)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder, not a file")
    if exts and not path.lower().endswith(tuple(exts)):
        raise ValueError(f"{what} {path} must end in {' or '.join(exts)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise ValueError(f"{what} {path}: its folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: its folder {folder} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} exists and is not writable")
    return path


def output_dir(path, what):
    """A folder to be written into (made if missing): not a file, and the
    nearest existing folder on its way is writable."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path} is a file, not a folder")
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise ValueError(f"{what} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: {base} is not writable")
    return path


def existing_file(path, what, kind="file"):
    """A file to be read; kind names it in the message ("model file")."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder, not a {kind}")
    if not os.path.exists(path):
        raise ValueError(f"{what} {path} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{what} {path} is not readable")
    return path


def existing_dir(path, what):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{what} {path} does not exist")
    if not os.path.isdir(path):
        raise ValueError(f"{what} {path} is a file, not a folder")
    return path


def fraction(value, what, include_one=False):
    """A number in (0, 1), or (0, 1] with include_one."""
    ok = math.isfinite(value) and 0 < value and (value <= 1 if include_one else value < 1)
    if not ok:
        raise ValueError(f"{what} must be in (0, 1{']' if include_one else ')'}, got {value:g}")
    return value


def positive_int(value, what):
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")
    return value


def positive_float(value, what):
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive number, got {value:g}")
    return value


_FOLDS = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def folds(text, what="--folds"):
    """"6-10" / "1,3,5" -> sorted 1-based fold numbers: the one reading of the folds
    syntax (verifier.commands.parse_folds checks them against the pairs file)."""
    if not _FOLDS.match(text.replace(" ", "")):
        raise ValueError(f"{what} must look like 6-10 or 1,2,3, got {text!r}")
    out = set()
    for part in text.replace(" ", "").split(","):
        lo, _, hi = part.partition("-")
        if hi and int(hi) < int(lo):
            raise ValueError(f"{what} {text!r}: {part} runs backwards")
        if int(hi or lo) > 1000:      # a pairs file has a few folds; keeps the set small
            raise ValueError(f"{what} {text!r}: no pairs file has {int(hi or lo)} folds")
        out.update(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def run_model_file(path):
    """The model file of a `deepid2 train` run folder (its best.safetensors), or path."""
    return os.path.join(path, "best.safetensors") if os.path.isdir(path) else path


def trained_network(path, what="--nets"):
    """A `deepid2 train` run folder or model file that holds a trained network."""
    if not os.path.exists(path):
        raise ValueError(f"{what} {path} does not exist (give a `deepid2 train` run folder "
                         "or its best.safetensors)")
    file = run_model_file(path)
    if not os.path.isfile(file):
        raise ValueError(f"{what} {path}: no trained network at {file} (give a `deepid2 "
                         "train` run folder or its best.safetensors)")
    return file


def model_file(path, what="--model"):
    """An optional verifier model file (None: the shipped one)."""
    return None if path is None else existing_file(path, what, "model file")


# one command's arguments
def synth_args(args):
    positive_int(args.identities, "--identities")
    positive_int(args.images_per_identity, "--images-per-identity")
    output_dir(args.out, "output folder")


def train_args(args):
    """`deepid2 train`'s augmentation options."""
    strength = args.augment_strength
    if strength is None:
        return
    if not args.augment:
        raise ValueError("--augment-strength needs --augment")
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(f"--augment-strength must be a number >= 0, got {strength:g}")
    from .training.augment import AugmentConfig
    try:
        AugmentConfig().scaled(strength)
    except ValueError as e:
        raise ValueError(f"--augment-strength {strength:g} is too strong: {e}") from None


def fit_verifier_args(args):
    for net in args.nets:
        trained_network(net)
    existing_dir(args.data, "--data")
    output_file(args.out, MODEL_EXTS, "--out")
    if args.pca is not None:   # None: fit_verifier_main picks it from the data
        positive_int(args.pca, "--pca")
    positive_int(args.pairs, "--pairs")
    if args.cache is not None:
        output_dir(args.cache, "--cache")
    if args.em_iters is not None:
        positive_int(args.em_iters, "--em-iters")
    if args.em_tol is not None:
        positive_float(args.em_tol, "--em-tol")


def verify_args(args):
    model_file(args.model)


def enroll_args(args):
    existing_dir(args.folder, "identity folder")
    output_file(args.gallery, GALLERY_EXTS, "--gallery")
    model_file(args.model)


def identify_args(args):
    positive_int(args.top, "--top")
    existing_file(args.gallery, "--gallery", "gallery file")
    model_file(args.model)


def eval_lfw_args(args):
    existing_dir(args.lfw, "--lfw")
    existing_file(args.pairs, "--pairs", "pairs file")
    model_file(args.model)
    if args.out is not None:
        output_dir(args.out, "--out")
    if args.folds is not None:
        folds(args.folds)
    if args.unaligned is not None:
        existing_dir(args.unaligned, "--unaligned")


def eval_ident_args(args):
    if (args.pairs is None) != (args.folds is None):
        raise ValueError("--pairs and --folds go together (the people of those folds)")
    existing_dir(args.data, "--data")
    model_file(args.model)
    if args.pairs is not None:
        existing_file(args.pairs, "--pairs", "pairs file")
        folds(args.folds)
    fraction(args.known_fraction, "--known-fraction", include_one=True)
    fraction(args.far, "--far")
    if args.out is not None:
        output_dir(args.out, "--out")


def eval_landmarks_args(args):
    existing_dir(args.data, "--data")
    if args.model is not None:
        existing_file(args.model, "--model", "model file")
    if args.limit is not None:
        positive_int(args.limit, "--limit")
    if args.levels is not None:
        positive_int(args.levels, "--levels")
    if args.yunet is not None:
        existing_file(args.yunet, "--yunet", "model file")
    if args.json is not None:
        output_file(args.json, (".json",), "--json")
