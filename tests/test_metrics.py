"""Frechet distance, KID and Inception Score against direct float64 references and closed forms."""

import numpy as np
import pytest
import scipy.linalg

from score_sde.metrics import frechet, kid
from score_sde.metrics.inception_score import inception_score


def _random_cov(rng, d, n=None):
    n = n or 3 * d
    a = rng.normal(size=(n, d))
    return a.T @ a / n


def _reference_fd(mu1, s1, mu2, s2):
    """The textbook formula with scipy's general matrix square root (float64)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_fd_matches_scipy_sqrtm_reference(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    got = frechet.frechet_distance(mu1, s1, mu2, s2)
    ref = _reference_fd(mu1, s1, mu2, s2)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # The trace term alone, which carries all the numerical difficulty.
    np.testing.assert_allclose(
        frechet.trace_sqrt_product(s1, s2), np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2))),
        rtol=1e-6,
    )


def test_sqrtm_psd_squares_back():
    rng = np.random.default_rng(0)
    s = _random_cov(rng, 10)
    r = frechet.sqrtm_psd(s)
    np.testing.assert_allclose(r @ r, s, atol=1e-10)
    np.testing.assert_allclose(r, r.T, atol=1e-12)


def test_fd_rank_deficient_covariances_are_finite():
    """Fewer samples than dimensions (common with few FID samples) must not break the sqrt."""
    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(8, 32)), rng.normal(size=(8, 32))
    fd = frechet.frechet_distance_from_features(f1, f2)
    assert np.isfinite(fd) and fd > 0


def test_fd_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(500, 20)) * rng.uniform(0.1, 3.0, size=20)
    assert abs(frechet.frechet_distance_from_features(f, f)) < 1e-8


@pytest.mark.parametrize("d,m,s", [(4, 0.5, 1.0), (16, 0.0, 2.0), (32, 1.5, 0.3)])
def test_fd_closed_form_isotropic_gaussians(d, m, s):
    """N(0, I) vs N(m 1, s^2 I): FD = d m^2 + d (1 - s)^2 (exact covariances)."""
    mu1, mu2 = np.zeros(d), np.full(d, m)
    fd = frechet.frechet_distance(mu1, np.eye(d), mu2, s**2 * np.eye(d))
    np.testing.assert_allclose(fd, d * m**2 + d * (1 - s) ** 2, rtol=1e-10, atol=1e-12)


def test_fd_closed_form_from_large_samples():
    rng = np.random.default_rng(3)
    d, n, m, s = 4, 200_000, 0.7, 1.5
    f1 = rng.normal(size=(n, d))
    f2 = m + s * rng.normal(size=(n, d))
    expected = d * m**2 + d * (1 - s) ** 2
    np.testing.assert_allclose(frechet.frechet_distance_from_features(f1, f2), expected, rtol=0.02)


def test_fd_closed_form_commuting_covariances():
    """Diagonal covariances: FD = |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.1, 4, size=12), rng.uniform(0.1, 4, size=12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_fd_errors_name_the_problem():
    with pytest.raises(ValueError, match="shapes differ"):
        frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(KeyError, match="sigma"):
        frechet.frechet_distance_from_stats({"mu": np.zeros(2)}, {"mu": 0, "sigma": 0})


def _reference_mmd2(x, y):
    """Direct double loop over pairs, float64."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_mmd2_matches_direct_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(20, 6)), rng.normal(0.3, 1.2, size=(15, 6))
    np.testing.assert_allclose(kid.mmd2_unbiased(x, y), _reference_mmd2(x, y), rtol=1e-10)


def test_kid_subsets_average_of_direct_mmd2():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(40, 5)), rng.normal(0.5, 1.0, size=(30, 5))
    mean, std = kid.kernel_distance(x, y, num_subsets=4, subset_size=10, seed=3)
    gen = np.random.default_rng(3)
    vals = []
    for _ in range(4):
        xs = x[gen.choice(40, 10, replace=False)]
        ys = y[gen.choice(30, 10, replace=False)]
        vals.append(_reference_mmd2(xs, ys))
    np.testing.assert_allclose(mean, np.mean(vals), rtol=1e-10)
    np.testing.assert_allclose(std, np.std(vals), rtol=1e-8)


def test_kid_same_distribution_near_zero_and_shift_positive():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
    same, std = kid.kernel_distance(x, y, num_subsets=10, subset_size=500)
    assert abs(same) < 4 * std + 1e-3
    shifted, _ = kid.kernel_distance(x, y + 1.0, num_subsets=10, subset_size=500)
    assert shifted > 100 * abs(same)


def test_inception_score_uniform_predictions_is_one():
    p = np.full((100, 10), 0.1)
    mean, std = inception_score(probs=p, num_splits=5)
    np.testing.assert_allclose(mean, 1.0, rtol=1e-12)
    assert std < 1e-12
    mean, _ = inception_score(logits=np.zeros((100, 10)), num_splits=5)
    np.testing.assert_allclose(mean, 1.0, rtol=1e-12)


def test_inception_score_balanced_one_hot_is_num_classes():
    c = 7
    p = np.eye(c)[np.arange(10 * c) % c]
    mean, std = inception_score(probs=p, num_splits=10)
    np.testing.assert_allclose(mean, c, rtol=1e-12)
    # Confident logits approach the same limit.
    mean, _ = inception_score(logits=60.0 * p, num_splits=10)
    np.testing.assert_allclose(mean, c, rtol=1e-6)


def test_inception_score_matches_direct_kl():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(50, 5)) * 2
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    py = p.mean(0)
    expected = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), axis=1)))
    got, _ = inception_score(logits=logits, num_splits=1)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    got_p, _ = inception_score(probs=p, num_splits=1)
    np.testing.assert_allclose(got_p, expected, rtol=1e-10)


def test_inception_score_argument_errors():
    with pytest.raises(ValueError, match="exactly one"):
        inception_score()
    with pytest.raises(ValueError, match="num_splits"):
        inception_score(logits=np.zeros((3, 2)), num_splits=5)
