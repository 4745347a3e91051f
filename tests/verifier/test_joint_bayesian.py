"""Joint Bayesian: EM against the generative model's truth, the closed-form
score against a direct float64 log-likelihood ratio, degenerate input."""
import numpy as np
import pytest

from deepid2_core.verifier import JointBayesian, L2Scorer, kfold_accuracy, sample_pairs
from deepid2_core.verifier.joint_bayesian import score_matrices
from verifier_synth import draw_identities, random_covariance


def close(x, ref, atol, rtol):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert x.shape == ref.shape
    bad = np.abs(x - ref) > atol + rtol * np.abs(ref)
    assert not bad.any(), \
        f"{bad.sum()} of {bad.size} differ; max |x-ref| {np.abs(x - ref).max():.3g}"


def rel_err(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def gaussian_logpdf(x, cov):
    """Direct float64 log-density of N(0, cov) for each row of x."""
    _, logdet = np.linalg.slogdet(cov)
    q = np.einsum("ij,ij->i", x, np.linalg.solve(cov, x.T).T)
    return -0.5 * (q + logdet + x.shape[1] * np.log(2 * np.pi))


@pytest.fixture(scope="module")
def truth():
    rng = np.random.default_rng(11)
    d = 8
    return rng, random_covariance(rng, d, 1.0), random_covariance(rng, d, 1.5)


def test_em_recovers_the_generating_covariances(truth):
    rng, s_mu, s_eps = truth
    errors = []
    for n_ids in (300, 3000):
        x, labels, mu, eps = draw_identities(rng, s_mu, s_eps, n_ids, mean=rng.normal(0, 3, 8))
        jb = JointBayesian.fit(x, labels)
        # yardstick: the sample covariance of the true (hidden) mu and eps
        oracle_mu = rel_err(mu.T @ mu / n_ids, s_mu)
        oracle_eps = rel_err(eps.T @ eps / len(x), s_eps)
        errors.append((rel_err(jb.s_mu, s_mu), rel_err(jb.s_eps, s_eps)))
        assert errors[-1][0] < 2 * oracle_mu + 0.02 and errors[-1][1] < 2 * oracle_eps + 0.02
        assert jb.iterations < 100
    assert errors[1][0] < 0.12 and errors[1][1] < 0.06
    assert errors[1][0] < errors[0][0] and errors[1][1] < errors[0][1]


def test_em_never_lowers_the_likelihood_and_paper_step_is_worse(truth):
    rng, s_mu, s_eps = truth
    x, labels, _, _ = draw_identities(rng, s_mu, s_eps, 400)
    jb = JointBayesian.fit(x, labels, ridge=0.0, tol=1e-9)
    h = np.array(jb.history)
    assert np.all(np.diff(h) >= -1e-12 * np.abs(h[1:])), "EM lowered the likelihood"
    assert h[-1] > h[0] + 1e-4
    paper = JointBayesian.fit(x, labels, m_step="paper", max_iter=50)
    # the simplified update drops the posterior covariances: S_mu shrinks
    # (its share moves to S_eps) and the fit is no longer the likelihood's maximum
    assert np.trace(paper.s_mu) < 0.9 * np.trace(jb.s_mu)
    assert paper.log_likelihood(x, labels) < jb.log_likelihood(x, labels) - 1.0


def test_log_likelihood_matches_dense_gaussians():
    rng = np.random.default_rng(3)
    d = 3
    s_mu, s_eps = random_covariance(rng, d, 1.0), random_covariance(rng, d, 0.7)
    x, labels, _, _ = draw_identities(rng, s_mu, s_eps, 6, 1, 4)
    jb = JointBayesian(np.zeros(d), s_mu, s_eps)
    ref = 0.0
    for k in np.unique(labels):
        xs = x[labels == k]
        m = len(xs)
        cov = np.kron(np.eye(m), s_eps) + np.kron(np.ones((m, m)), s_mu)
        ref += gaussian_logpdf(xs.reshape(1, -1), cov)[0]
    close(jb.log_likelihood(x, labels), ref, 1e-9, 1e-10)


def test_a_and_g_match_the_papers_closed_form(truth):
    _, s_mu, s_eps = truth
    a, g = score_matrices(s_mu, s_eps)
    f = np.linalg.inv(s_eps)
    g_ref = -np.linalg.inv(2 * s_mu + s_eps) @ s_mu @ f
    a_ref = np.linalg.inv(s_mu + s_eps) - (f + g_ref)
    close(g, g_ref, 1e-10, 1e-8)
    close(a, a_ref, 1e-10, 1e-8)


def test_score_is_twice_the_log_likelihood_ratio_up_to_a_constant(truth):
    rng, s_mu, s_eps = truth
    x, labels, _, _ = draw_identities(rng, s_mu, s_eps, 200, mean=rng.normal(0, 2, 8))
    jb = JointBayesian.fit(x, labels)
    x1, x2 = x[rng.integers(0, len(x), 50)], x[rng.integers(0, len(x), 50)]
    s = jb.s_mu + jb.s_eps
    same_cov = np.block([[s, jb.s_mu], [jb.s_mu, s]])
    diff_cov = np.block([[s, np.zeros_like(s)], [np.zeros_like(s), s]])
    pair = np.concatenate([x1, x2], 1) - np.concatenate([jb.mean, jb.mean])
    llr = gaussian_logpdf(pair, same_cov) - gaussian_logpdf(pair, diff_cov)
    r = jb.score(x1, x2)
    close(r - r[0], 2 * (llr - llr[0]), 1e-9, 1e-9)


def test_vectorised_scores_match_one_pair_at_a_time(truth):
    rng, s_mu, s_eps = truth
    x, labels, _, _ = draw_identities(rng, s_mu, s_eps, 50)
    jb = JointBayesian.fit(x, labels)
    p, g = x[:7], x[7:12]
    ref = np.array([[jb.score(p[i:i + 1], g[j:j + 1])[0] for j in range(5)] for i in range(7)])
    close(jb.score_matrix(p, g), ref, 1e-9, 1e-10)
    close(jb.score(p[:1], g), ref[0], 1e-9, 1e-10)        # one against many


def test_jb_beats_l2_on_unseen_identities():
    rng = np.random.default_rng(7)
    d = 16
    s_mu, s_eps = random_covariance(rng, d, 1.0), random_covariance(rng, d, 1.5)
    x, labels, _, _ = draw_identities(rng, s_mu, s_eps, 600, 2, 8)
    jb = JointBayesian.fit(x, labels)
    xt, lt, _, _ = draw_identities(rng, s_mu, s_eps, 400, 2, 6)
    first, second, same = sample_pairs(lt, 2000, seed=1)
    folds = np.arange(len(same)) % 10
    acc = {name: kfold_accuracy(s.score(xt[first], xt[second]), same, folds)["mean"]
           for name, s in (("jb", jb), ("l2", L2Scorer()))}
    true_jb = JointBayesian(np.zeros(d), s_mu, s_eps)
    acc["truth"] = kfold_accuracy(true_jb.score(xt[first], xt[second]), same, folds)["mean"]
    assert acc["jb"] > acc["l2"] + 0.04, acc
    assert acc["jb"] > acc["truth"] - 0.02, acc


def test_ridge_keeps_rank_deficient_features_finite():
    rng = np.random.default_rng(2)
    s_mu, s_eps = random_covariance(rng, 4, 1), random_covariance(rng, 4, 1)
    x, labels, _, _ = draw_identities(rng, s_mu, s_eps, 60)
    x = np.concatenate([x, x[:, :2]], 1)        # two copied dimensions: singular covariances
    jb = JointBayesian.fit(x, labels)
    assert np.all(np.isfinite(jb.A)) and np.all(np.isfinite(jb.score(x[:10], x[10:20])))


@pytest.mark.parametrize("case, message", [
    ("one_image_each", "at least 2 identities with 2 or more images"),
    ("one_multi_identity", "1 of them with >= 2 images"),
    ("nan", "NaN or inf"),
    ("labels", "labels must be a 1-D array of 20"),
])
def test_degenerate_input_is_refused_clearly(case, message):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 4))
    labels = np.repeat(np.arange(10), 2)
    if case == "one_image_each":
        labels = np.arange(20)
    elif case == "one_multi_identity":
        labels = np.concatenate([[0, 0], np.arange(1, 19)])
    elif case == "nan":
        x[3, 1] = np.nan
    elif case == "labels":
        labels = labels[:-1]
    with pytest.raises(ValueError, match=message):
        JointBayesian.fit(x, labels)


def test_scoring_checks_dimensions():
    rng = np.random.default_rng(0)
    jb = JointBayesian.fit(rng.standard_normal((20, 4)), np.repeat(np.arange(10), 2))
    with pytest.raises(ValueError, match="dimension 3, the model has 4"):
        jb.score(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="3 first and 2 second"):
        jb.score(np.ones((3, 4)), np.ones((2, 4)))


@pytest.mark.parametrize("exact", [True, False])
def test_em_step_matches_the_per_class_formulas(truth, exact):
    """The simultaneously diagonalised EM step against the direct formulas:
    T_m = (m S_mu + S_eps)^-1 inverted per class size."""
    from deepid2_core.verifier.joint_bayesian import _em_step, _within_scatter
    rng, s_mu, s_eps = truth
    d = len(s_mu)
    sizes = np.array([1, 2, 2, 3, 5, 8, 8, 13])
    index = np.repeat(np.arange(len(sizes)), sizes)
    x = rng.normal(size=(len(index), d))
    sums = np.zeros((len(sizes), d))
    np.add.at(sums, index, x)
    within = _within_scatter(x, index, sums, sizes)
    new_mu, new_eps, loglik = _em_step(x, index, sums, sizes, s_mu, s_eps, within, exact)
    e_mu, cov_mu, cov_eps, ll = np.empty_like(sums), np.zeros((d, d)), np.zeros((d, d)), 0.0
    for c, m in enumerate(sizes):
        t = np.linalg.inv(m * s_mu + s_eps)
        e_mu[c] = s_mu @ t @ sums[c]
        cov = s_mu - m * s_mu @ t @ s_mu
        cov_mu += cov
        cov_eps += m * cov
        big = np.kron(np.eye(m), s_eps) + np.kron(np.ones((m, m)), s_mu)
        ll += gaussian_logpdf(x[index == c].reshape(1, -1), big)[0]
    r = x - e_mu[index]
    ref_mu = (e_mu.T @ e_mu + (cov_mu if exact else 0)) / len(sizes)
    ref_eps = (r.T @ r + (cov_eps if exact else 0)) / len(x)
    close(new_mu, ref_mu, 1e-10, 1e-9)
    close(new_eps, ref_eps, 1e-10, 1e-9)
    assert loglik == pytest.approx(ll, rel=1e-10)
