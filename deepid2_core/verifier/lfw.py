"""LFW's pair lists: View 2 (pairs.txt) and View 1 (pairsDevTrain.txt,
pairsDevTest.txt).

Formats (fields separated by tabs or spaces):

* View 2: header "10 300" (folds, pairs of each kind per fold), then per fold
  300 matched lines "name n1 n2" followed by 300 mismatched lines
  "name1 n1 name2 n2";
* View 1: header "N", then N matched lines followed by N mismatched lines:
  one fold.

`read_pairs` returns a list of folds, each a list of `Pair`s (path1, path2,
same) with paths relative to the LFW root, "Name/Name_0001.jpg" (image
numbers zero-padded to 4 digits, as LFW names its files).
"""
import os
import re
from typing import NamedTuple

_NAME = re.compile(r"^[^\s/\\]+$")


class Pair(NamedTuple):
    path1: str
    path2: str
    same: bool


def image_path(name, number):
    return f"{name}/{name}_{number:04d}.jpg"


def _number(tok, where):
    if not tok.isdigit() or int(tok) < 1:
        raise ValueError(f"{where}: image number must be a positive integer, got {tok!r}")
    return int(tok)


def _name(tok, where):
    if not _NAME.match(tok) or tok in (".", ".."):
        raise ValueError(f"{where}: {tok!r} is not a person's name")
    return tok


def _parse_pair(fields, same, where):
    if same:
        if len(fields) != 3:
            raise ValueError(f"{where}: a matched pair needs 3 fields 'name n1 n2', got "
                             f"{len(fields)}: {' '.join(fields)!r}")
        name = _name(fields[0], where)
        return Pair(image_path(name, _number(fields[1], where)),
                    image_path(name, _number(fields[2], where)), True)
    if len(fields) != 4:
        raise ValueError(f"{where}: a mismatched pair needs 4 fields 'name1 n1 name2 n2', got "
                         f"{len(fields)}: {' '.join(fields)!r}")
    return Pair(image_path(_name(fields[0], where), _number(fields[1], where)),
                image_path(_name(fields[2], where), _number(fields[3], where)), False)


def parse_pairs(text, source="pairs"):
    """The folds of a pairs file's text (see the module docstring)."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{source}: empty file")
    header = lines[0].split()
    if len(header) not in (1, 2) or not all(t.isdigit() and int(t) > 0 for t in header):
        raise ValueError(f"{source}:1: header must be 'FOLDS PAIRS' (View 2, e.g. '10 300') "
                         f"or 'PAIRS' (View 1, e.g. '1100'), got {lines[0]!r}")
    n_folds, per_kind = (1, int(header[0])) if len(header) == 1 else map(int, header)
    want = 1 + n_folds * 2 * per_kind
    if len(lines) != want:
        raise ValueError(f"{source}: the header '{lines[0].strip()}' promises {want - 1} pair "
                         f"lines ({n_folds} folds x {per_kind} matched + {per_kind} mismatched), "
                         f"the file has {len(lines) - 1}")
    folds, k = [], 1
    for _ in range(n_folds):
        fold = []
        for same in (True, False):
            for _ in range(per_kind):
                fold.append(_parse_pair(lines[k].split(), same, f"{source}:{k + 1}"))
                k += 1
        folds.append(fold)
    return folds


def read_pairs(path):
    """The folds of a pairs file: 10 for View 2, 1 for View 1."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"pairs file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file ({e.reason})") from None
    return parse_pairs(text, path)


def person_of(path):
    return path.split("/", 1)[0]


def people_of_folds(folds):
    """Sorted names of the people appearing in any pair of the given folds
    (a list of folds, e.g. folds[:5]): the people a model tested on these
    folds must not have seen in training."""
    if folds and isinstance(folds[0], Pair):
        raise ValueError("people_of_folds takes a list of folds (lists of pairs), e.g. "
                         "folds[:5], not one fold")
    return sorted({person_of(p) for fold in folds for pair in fold
                   for p in (pair.path1, pair.path2)})


def flatten(folds):
    """(pairs, fold number of each pair) over all folds."""
    pairs = [p for fold in folds for p in fold]
    return pairs, [k for k, fold in enumerate(folds) for _ in fold]


def missing_images(folds, root):
    """Relative paths used by the pairs that are not files under root."""
    paths = sorted({p for fold in folds for pair in fold for p in pair[:2]})
    return [p for p in paths if not os.path.isfile(os.path.join(root, *p.split("/")))]
