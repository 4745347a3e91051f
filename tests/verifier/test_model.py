"""The verifier pipeline (PCA + Joint Bayesian + thresholds), its float32
export, and training pair sampling."""
import numpy as np
import pytest

from deepid2_core.verifier import Verifier, sample_pairs
from verifier_synth import draw_identities, random_covariance


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(21)
    d_latent, dim = 10, 40
    mix = rng.standard_normal((d_latent, dim))       # features live in a 10-d subspace + noise
    s_mu, s_eps = random_covariance(rng, d_latent, 1.0), random_covariance(rng, d_latent, 1.2)

    def draw(n):
        z, labels, _, _ = draw_identities(rng, s_mu, s_eps, n)
        return z @ mix + 0.01 * rng.standard_normal((len(z), dim)) + 2.0, labels
    return draw(400), draw(200)


def test_fit_export_and_reload_score_alike(data):
    (x, labels), (xt, lt) = data
    v = Verifier.fit(x, labels, d=10, n_pairs=1000)
    first, second, same = sample_pairs(lt, 500, seed=2)
    scores = v.score(xt[first], xt[second])
    assert np.mean((scores >= v.threshold) == same) > 0.7
    t = v.export_tensors()
    assert {k: a.shape for k, a in t.items()} == {
        "pca/mean": (40,), "pca/components": (40, 10), "jb/A": (10, 10), "jb/G": (10, 10),
        "jb/threshold": (1,), "l2/threshold": (1,), "cosine/threshold": (1,)}
    assert all(a.dtype == np.float32 for a in t.values())
    back = Verifier.from_tensors(t)
    # what a reader of the file computes: z = (x - mean) @ C, r = z'Az + ... (float64 here)
    z1 = (xt[first] - t["pca/mean"].astype(np.float64)) @ t["pca/components"]
    z2 = (xt[second] - t["pca/mean"].astype(np.float64)) @ t["pca/components"]
    a, g = t["jb/A"].astype(np.float64), t["jb/G"].astype(np.float64)
    ref = (np.einsum("ij,jk,ik->i", z1, a, z1) + np.einsum("ij,jk,ik->i", z2, a, z2)
           - 2 * np.einsum("ij,jk,ik->i", z1, g, z2))
    got = back.score(xt[first], xt[second])
    assert not (np.abs(got - ref) > 1e-6 + 1e-6 * np.abs(ref)).any()
    # float32 export changes the scores only at float32 precision
    scale = np.abs(scores).max()
    assert np.abs(got - scores).max() < 1e-4 * scale
    assert np.mean((got >= back.threshold) == (scores >= v.threshold)) > 0.99
    with pytest.raises(ValueError, match="missing: jb/G"):
        Verifier.from_tensors({k: a for k, a in t.items() if k != "jb/G"})


def test_sample_pairs_are_valid_and_reproducible():
    labels = np.repeat(np.arange(30), np.arange(30) % 4 + 1)
    first, second, same = sample_pairs(labels, 50, seed=5)
    again = sample_pairs(labels, 50, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((first, second, same), again))
    assert np.array_equal(labels[first] == labels[second], same)
    assert same.sum() == 50 and (~same).sum() == 50 and np.all(first != second)
    assert len({(i, j) for i, j in zip(first, second)}) == 100
    # only 71 matched pairs exist: asking for more gives each of them once
    _, _, same = sample_pairs(labels, 200, seed=5)
    assert same.sum() == 71 and (~same).sum() == 200


def test_fitted_verifier_with_networks_saves_what_load_reads(tmp_path):
    """fit-verifier's output path: Verifier.fit on raw features, with_networks,
    save; Verifier.load gives the same networks, scores and threshold."""
    from deepid2_core.backends import get_backend
    from deepid2_core.face.inputs import PatchSpec
    from deepid2_core.nets.deepid2 import NetConfig, init_params
    from deepid2_core.verifier.features import FeatureExtractor, PatchInputs
    cfg = NetConfig(n_classes=4, height=33, width=31, channels=1, feature_dim=12)
    rng = np.random.default_rng(5)
    params = init_params(cfg, 3)
    ext = FeatureExtractor(PatchInputs.whole(PatchSpec(33, 31, 1)), [(params, cfg)],
                           get_backend("cpu"), progress=False)
    s_mu, s_eps = random_covariance(rng, 24, 1.0), random_covariance(rng, 24, 0.5)
    x, labels, _, _ = draw_identities(rng, s_mu, s_eps, 30)
    v = Verifier.fit(x, labels, d=8, n_pairs=200)
    with pytest.raises(ValueError, match="the networks give 24-d features"):
        Verifier.fit(x[:, :20], labels, d=8, n_pairs=200).with_networks(ext)
    with pytest.raises(ValueError, match="fitted on features and has no patch networks"):
        v.save(str(tmp_path / "nothing.safetensors"))
    path = str(tmp_path / "v.safetensors")
    v.with_networks(ext).save(path, extra_meta={"note": "test"})
    back = Verifier.load(path, progress=False)
    assert back.threshold == float(np.float32(v.threshold)) and back.metadata["note"] == "test"
    assert back.layout == ext.layout
    assert back.key() == Verifier.load(path, progress=False).key()      # a stable identity
    other = FeatureExtractor(PatchInputs.whole(PatchSpec(33, 31, 1)),
                             [(init_params(cfg, 4), cfg)], get_backend("cpu"), progress=False)
    assert back.key() != Verifier.load(path, progress=False).with_networks(other).key()
    faces = [rng.integers(0, 256, (80, 70, 3), dtype=np.uint8) for _ in range(3)]
    np.testing.assert_array_equal(back.features(faces), ext.extract(faces))
    ref = Verifier.from_tensors(v.export_tensors())
    np.testing.assert_array_equal(back.score(x[:5], x[5:10]), ref.score(x[:5], x[5:10]))
    np.testing.assert_allclose(back.score(x[:5], x[5:10]), v.score(x[:5], x[5:10]), rtol=1e-4)
    np.testing.assert_allclose(back.score_matrix(x[:3], x[3:7])[1],
                               back.score(np.repeat(x[1:2], 4, 0), x[3:7]), rtol=1e-12)
