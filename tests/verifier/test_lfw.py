"""LFW pair lists: synthetic files (both views, malformed lines) and, when
present, the real pairs.txt / pairsDevTrain.txt / pairsDevTest.txt."""
import os

import pytest

from deepid2_core.verifier.lfw import (Pair, flatten, missing_images, parse_pairs,
                                       people_of_folds, read_pairs)

DATA = os.environ.get("DEEPID2_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                   "shared", "data"))
VIEW2 = "2\t2\nAnn\t1\t2\nBob\t3\t12\nAnn\t1\tCid\t2\nBob\t2\tDee\t1\n" \
        "Eve\t1\t3\nFay\t2\t4\nEve\t2\tGus\t1\nHal\t1\tFay\t1\n\n"


def test_view2_synthetic():
    folds = parse_pairs(VIEW2)
    assert len(folds) == 2 and [len(f) for f in folds] == [4, 4]
    assert folds[0][0] == Pair("Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", True)
    assert folds[0][1] == Pair("Bob/Bob_0003.jpg", "Bob/Bob_0012.jpg", True)
    assert folds[0][2] == Pair("Ann/Ann_0001.jpg", "Cid/Cid_0002.jpg", False)
    assert [p.same for p in folds[1]] == [True, True, False, False]
    assert people_of_folds(folds[:1]) == ["Ann", "Bob", "Cid", "Dee"]
    assert people_of_folds(folds[1:]) == ["Eve", "Fay", "Gus", "Hal"]
    pairs, fold_of = flatten(folds)
    assert len(pairs) == 8 and fold_of == [0] * 4 + [1] * 4


def test_view1_synthetic(tmp_path):
    path = tmp_path / "pairsDevTest.txt"
    path.write_text("2\nAnn 1 2\nBob 1 2\nAnn 1 Bob 2\nCid 4 Ann 2\n")
    folds = read_pairs(path)
    assert len(folds) == 1 and [p.same for p in folds[0]] == [True, True, False, False]
    assert folds[0][3] == Pair("Cid/Cid_0004.jpg", "Ann/Ann_0002.jpg", False)


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("ten 300\n", "header must be"),
    ("1 1\nAnn 1 2\n", "promises 2 pair lines"),
    ("1\nAnn 1 2\nAnn 1 Bob\n", r":3: a mismatched pair needs 4 fields"),
    ("1\nAnn 1 Bob 2\nAnn 1 Bob 2\n", r":2: a matched pair needs 3 fields"),
    ("1\nAnn one 2\nAnn 1 Bob 2\n", r":2: image number must be a positive integer, got 'one'"),
    ("1\nAnn 0 2\nAnn 1 Bob 2\n", "positive integer, got '0'"),
    ("1\n../x 1 2\nAnn 1 Bob 2\n", "is not a person's name"),
])
def test_malformed_files_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_pairs(text, "t.txt")


def test_missing_file_and_fold_argument(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_pairs(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="list of folds"):
        people_of_folds(parse_pairs(VIEW2)[0])


def _real(name):
    path = os.path.join(DATA, name)
    if not os.path.isfile(path):
        pytest.skip(f"{path} is absent (set DEEPID2_DATA to the shared data folder)")
    return read_pairs(path)


def test_real_view2():
    folds = _real("pairs.txt")
    assert len(folds) == 10 and all(len(f) == 600 for f in folds)
    assert all(sum(p.same for p in f) == 300 and all(p.same for p in f[:300]) for f in folds)
    assert folds[0][0] == Pair("Abel_Pacheco/Abel_Pacheco_0001.jpg",
                               "Abel_Pacheco/Abel_Pacheco_0004.jpg", True)
    people = [set(people_of_folds([f])) for f in folds]
    assert all(not (people[i] & people[j]) for i in range(10) for j in range(i))
    assert len(set(people_of_folds(folds[:5])) | set(people_of_folds(folds[5:]))) == 4281
    lfw = os.path.join(DATA, "lfw")
    if os.path.isdir(lfw):
        assert missing_images(folds, lfw) == []


def test_real_view1():
    train, test = _real("pairsDevTrain.txt"), _real("pairsDevTest.txt")
    assert len(train[0]) == 2200 and len(test[0]) == 1000
    assert not set(people_of_folds(train)) & set(people_of_folds(test))
