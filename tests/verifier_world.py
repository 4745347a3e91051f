"""The synthetic world of the verifier command tests (verifier/test_commands.py,
verifier/test_impostor.py): faces, a network trained on them, a verifier.
Each test module that imports `world` builds its own (module scope)."""
import pytest

from deepid2_core.cli import main
from deepid2_core.synth import make_dataset

IDS, IMGS = 10, 8


IDS, IMGS = 10, 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic faces, a network trained on them for a few epochs, a verifier."""
    root = tmp_path_factory.mktemp("vcli")
    faces = root / "faces"
    make_dataset(faces, IDS, IMGS, seed=1, progress=False, workers=1)
    run = root / "run"
    assert main(["train", "--data", str(faces), "--out", str(run), "--epochs", "6",
                 "--batch", "32", "--lr", "0.05", "--seed", "1"]) == 0
    model = root / "verifier.safetensors"
    assert main(["fit-verifier", "--nets", str(run), "--data", str(faces), "--out", str(model),
                 "--pca", "24", "--pairs", "200"]) == 0
    return dict(root=root, faces=faces, run=run, model=model)
