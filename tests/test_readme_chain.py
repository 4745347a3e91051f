"""The README's "Train your own model" chain, synth -> train -> fit-verifier
-> verify, run as the README gives it (smaller: fewer identities, images and
epochs) in a fresh folder, with fit-verifier's default --pca (issue 25: it
failed with "PCA dimension d=180 exceeds the rank")."""
import os

import numpy as np
import pytest

from deepid2_core.cli import main
from deepid2_core.face.detect import read_image
from deepid2_core.face.pipeline import align_image, new_aligner
from deepid2_core.verifier.pca import DEFAULT_DIM, PCA


def detected_faces(faces, n):
    """n synthetic images in which `deepid2 verify` (Haar detection) finds a face."""
    aligner, found = new_aligner(), []
    for d in sorted(os.listdir(faces)):
        for f in sorted(os.listdir(os.path.join(faces, d))):
            path = os.path.join(faces, d, f)
            if align_image(read_image(path)[0], aligner=aligner)[0] is not None:
                found.append(path)
                if len(found) == n:
                    return found
    pytest.fail("too few synthetic faces detected")


def test_readme_chain_synth_train_fit_verify(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main("synth faces/ --identities 12 --images-per-identity 6 --seed 0".split()) == 0
    assert main("train --data faces/ --out runs/a --epochs 3 --lr 0.05".split()) == 0
    capsys.readouterr()
    assert main("fit-verifier --nets runs/a --data faces/ --out my-verifier.safetensors"
                .split()) == 0
    out, err = capsys.readouterr()
    # 72 images span fewer than 180 directions: the default follows them, with one note
    notes = [line for line in err.splitlines() if line.startswith("note: PCA")]
    assert len(notes) == 1, err
    assert out.startswith("PCA ") and int(out.split()[1].rstrip(",")) < DEFAULT_DIM
    a, b = detected_faces("faces", 2)
    assert main(["verify", "--model", "my-verifier.safetensors", a, b]) in (0, 1)
    out = capsys.readouterr().out
    assert "same" in out or "different" in out, out


def test_pca_default_follows_the_rank():
    x = np.random.default_rng(0).normal(size=(50, 300))   # rank 49
    assert PCA.fit(x, None).dim == 49
    assert PCA.fit(np.random.default_rng(0).normal(size=(400, 300)), None).dim == DEFAULT_DIM
    with pytest.raises(ValueError, match="choose d <= 49"):
        PCA.fit(x, 60)
