"""Digits quality beside matched floors: the pieces in closed form, the floor unbiased on two
draws of the same data, and known-worse sets scored worse."""

import numpy as np
import pytest
from scipy import ndimage

from score_sde.metrics import digits_quality as dq
from score_sde.metrics import frechet, kid, random_features
from score_sde.metrics.digits_classifier import digits_split
from score_sde.metrics.precision_recall import knn_radii, precision_recall


@pytest.fixture(scope="module")
def split():
    return digits_split()


@pytest.fixture(scope="module")
def split_features():
    """(test-split features, train-split features), as digits_quality uses them."""
    ref, pool = dq._split_features()
    return ref.features, pool


# ------------------------------------------------------------------------ the pieces


def test_precision_recall_in_closed_form():
    real = np.arange(10.0)[:, None]  # k = 1: every radius is 1
    np.testing.assert_array_equal(knn_radii(real, 1), np.ones(10))
    np.testing.assert_array_equal(knn_radii(real, 2), [2] + [1] * 8 + [2])
    fake = np.array([[0.5], [20.0]])  # one inside, one far; their radius to each other 19.5
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert precision_recall(real, real[:5], k=1) == (1.0, 0.6)  # 5 covered, 6th on a boundary
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real, fake, k=2)


def test_kid_jackknife_is_the_unbiased_estimate_and_leave_one_out_by_brute_force():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(7, 3)), rng.normal(size=(5, 3))]
    y = rng.normal(size=(6, 3)) + 0.3

    def mean_kid(sets, ref):
        return np.mean([kid.mmd2_unbiased(x, ref) for x in sets])

    def jackknife_var(values):
        return (len(values) - 1) / len(values) * np.sum((values - values.mean()) ** 2)

    without_x = np.array([mean_kid([np.delete(x, i, 0) if c == j else x
                                    for j, x in enumerate(xs)], y)
                          for c, x in enumerate(xs) for i in range(len(x))])
    without_y = np.array([mean_kid(xs, np.delete(y, i, 0)) for i in range(len(y))])
    value, se = kid.mmd2_jackknife(xs, y)
    np.testing.assert_allclose(value, mean_kid(xs, y), rtol=1e-12)
    np.testing.assert_allclose(se, np.sqrt(jackknife_var(without_x) + jackknife_var(without_y)),
                               rtol=1e-10)
    with pytest.raises(ValueError, match="m >= 3"):
        kid.mmd2_jackknife([xs[0][:2]], y)


def test_kid_jackknife_se_is_the_spread_of_the_estimate():
    """On Gaussian data with a mean shift, the standard error matches the spread of the KID
    over independent draws (the jackknife is conservative where the sets agree)."""
    rng = np.random.default_rng(1)
    draws = [kid.mmd2_jackknife([rng.normal(size=(128, 8)) + 0.3], rng.normal(size=(96, 8)))
             for _ in range(150)]
    values, ses = np.array(draws).T
    assert 0.85 < np.mean(ses) / np.std(values) < 1.25


def test_frechet_distance_to_a_fixed_reference_is_the_frechet_distance():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) * 1.5 + 0.2
    mu, sigma = frechet.feature_statistics(b)
    fd = frechet.frechet_distance_to({"mu": mu, "sigma": sigma})
    np.testing.assert_allclose(fd(a), frechet.frechet_distance_from_features(a, b), rtol=1e-9)


def test_random_features_are_the_convolutions_they_claim(split):
    """im2col against a loop: 'same' 3x3 convolutions, padding 0 (black, -1 after scaling),
    stride 2 on the second layer, ReLU, then the spatial mean; fixed legacy-stream weights."""
    x = split[2][:3].astype(np.float64)
    k1, k2 = random_features.random_conv_weights(1)
    assert k1[0, 0] == np.float32(np.random.RandomState(0).standard_normal() * np.sqrt(2 / 9))

    def conv(img, kernel, stride, pad):
        h, w, c = img.shape
        padded = np.pad(img, ((1, 1), (1, 1), (0, 0)), constant_values=pad)
        out = np.zeros((h // stride, w // stride, kernel.shape[1]))
        for i in range(0, h, stride):
            for j in range(0, w, stride):
                patch = padded[i:i + 3, j:j + 3].reshape(9, c)  # (row, col) order, then channel
                out[i // stride, j // stride] = np.maximum(patch.reshape(-1) @ kernel, 0)
        return out

    want = np.stack([conv(conv(2 * img - 1, k1, 1, -1.0), k2, 2, 0.0).mean((0, 1)) for img in x])
    got = random_features.random_conv_features(x)
    assert got.shape == (3, 128)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)


def test_matched_size_splits_large_sets_into_disjoint_sets_of_at_most_half_the_pool():
    assert dq.matched_size(64, 1437) == (64, 1)
    assert dq.matched_size(718, 1437) == (718, 1)
    assert dq.matched_size(719, 1437) == (359, 2)
    assert dq.matched_size(2048, 1437) == (682, 3)


# ------------------------------------------------------------- the floor is unbiased


def _held_out_draws(pool_feats, n, repeats, rng):
    """Per repeat: a fresh random half A of the train split as the floor pool, and n images
    of the other half B as the 'samples': two draws of the same data."""
    for _ in range(repeats):
        perm = rng.permutation(len(pool_feats["randconv"]))
        a, b = perm[: len(perm) // 2], perm[len(perm) // 2:]
        rows = rng.choice(b, n, replace=False)
        yield ({s: f[rows] for s, f in pool_feats.items()},
               {s: f[a] for s, f in pool_feats.items()})


# Spread (sd over 60 repeats of _held_out_draws) of value / floor, and of KID - floor.
SPREAD = {64: {"fd_classifier": 0.21, "fd_randconv": 0.086, "precision_randconv": 0.043,
               "recall_randconv": 0.033, "kid_randconv": 0.0021},
          400: {"fd_classifier": 0.165, "fd_randconv": 0.081, "precision_randconv": 0.021,
                "recall_randconv": 0.022, "kid_randconv": 0.00071}}


@pytest.mark.parametrize("n, repeats", [(64, 24), (400, 10)])
def test_matched_floor_is_unbiased_on_two_draws_of_the_same_data(split_features, n, repeats):
    """Real held-out images score their floor in expectation: over the repeats, mean value /
    mean floor is 1 (KID: mean value - mean floor is 0) within 3 standard errors of that mean
    (SPREAD / sqrt(repeats)). N = 400 is scored as two sets of 200 (A holds 718 images)."""
    ref, pool = split_features
    rng = np.random.default_rng(n)
    reports = [dq.matched_quality(samples, ref, floor_pool, floor_draws=6, seed=i)
               for i, (samples, floor_pool) in enumerate(_held_out_draws(pool, n, repeats, rng))]
    assert reports[0].sets == (1 if n == 64 else 2)
    for name, spread in SPREAD[n].items():
        value = np.mean([r.scores[name].value for r in reports])
        floor = np.mean([r.scores[name].floor for r in reports])
        bias = value - floor if name == "kid_randconv" else value / floor - 1
        print(f"N={n} {name}: bias {bias:+.4f}, tolerance {3 * spread / np.sqrt(repeats):.4f}")
        assert abs(bias) < 3 * spread / np.sqrt(repeats), (name, bias)
    # The floor's spread is the spread of real sets (KID: 0.0021 and 0.00071 measured).
    floor_std = np.mean([r.scores["kid_randconv"].floor_std for r in reports])
    assert 0.7 < floor_std / SPREAD[n]["kid_randconv"] < 1.4


def test_unmatched_floors_are_biased_and_the_matched_ratio_is_not(split_features):
    """The reason for matching: the FD floor of 64 images is several times that of 359, so
    64 real images look 'bad' against the larger floor while their matched ratio is ~1."""
    ref, pool = split_features
    samples, floor_pool = next(_held_out_draws(pool, 64, 1, np.random.default_rng(7)))
    small = dq.matched_quality(samples, ref, floor_pool, floor_draws=4).scores
    large = dq._floors(dq._Reference(ref), floor_pool, 359, 4, 3, 0)
    for name in ("fd_classifier", "fd_randconv"):
        assert small[name].value / large[name][0] > 2.5
        assert 0.7 < small[name].ratio < 1.4


# ----------------------------------------------------------- known-worse sets, wiring


@pytest.fixture(scope="module")
def worse_sets(split):
    x_tr, y_tr = split[:2]
    rng = np.random.default_rng(3)
    real = x_tr[rng.choice(len(x_tr), 256, replace=False)]
    low = x_tr[y_tr < 5]
    return {"real": real,
            "mode_dropped": low[rng.choice(len(low), 256, replace=False)],  # classes 0-4
            "noised": np.clip(real + 0.1 * rng.normal(size=real.shape), 0, 1),
            "blurred": ndimage.gaussian_filter(real, (0, 0.5, 0.5, 0))}


@pytest.fixture(scope="module")
def worse_reports(worse_sets):
    return {name: dq.digits_quality(x) for name, x in worse_sets.items()}


def test_known_worse_sets_score_worse_where_they_should(worse_reports):
    real = worse_reports["real"].scores
    for name, report in worse_reports.items():
        print(f"{name}: {report.summary()}")
    assert abs(real["fd_randconv"].ratio - 1) < 0.15 and abs(real["fd_classifier"].ratio - 1) < 0.3

    def z(s):  # distance from the floor in floor spreads
        return (s.value - s.floor) / s.floor_std

    dropped = worse_reports["mode_dropped"].scores  # coverage lost, fidelity kept
    assert z(dropped["recall_randconv"]) < -5 and abs(z(dropped["precision_randconv"])) < 3
    assert dropped["fd_classifier"].ratio > 5 and dropped["fd_randconv"].ratio > 1.5
    noised = worse_reports["noised"].scores  # fidelity lost
    assert z(noised["precision_randconv"]) < -5
    assert noised["fd_randconv"].ratio > 2 and noised["fd_classifier"].ratio > 1.1
    blurred = worse_reports["blurred"].scores
    assert blurred["fd_randconv"].ratio > 5 and blurred["fd_classifier"].ratio > 2
    for bad in ("mode_dropped", "noised", "blurred"):
        assert z(worse_reports[bad].scores["kid_randconv"]) > 10
    for bad in ("noised", "blurred"):  # even against KID's total standard error
        s = worse_reports[bad].scores["kid_randconv"]
        assert s.value > s.floor + 3 * s.se
    # The random space sees noise the classifier hardly does: the second space is not a copy.
    assert noised["fd_randconv"].ratio > 1.5 * noised["fd_classifier"].ratio


def test_report_fields_line_and_inputs(worse_sets, worse_reports):
    report = worse_reports["real"]
    assert (report.num_samples, report.matched_size, report.sets) == (256, 256, 1)
    flat = report.metrics()
    for name in dq.METRICS:
        assert {name, f"{name}_floor", f"{name}_floor_std"} <= set(flat)
    assert "kid_randconv_se" in flat and flat["matched_size"] == 256
    line = report.summary()
    fd = report.scores["fd_classifier"]
    assert line.startswith(f"256 samples: digits FD {fd.value:.1f} ({fd.ratio:.2f}x the floor "
                           f"of 256 real digits, {fd.floor:.1f} +- {fd.floor_std:.1f})")
    assert "precision" in line and "recall" in line and "KID" in line
    as_uint8 = dq.digits_quality(np.round(worse_sets["real"] * 255).astype(np.uint8))
    for name in dq.METRICS:  # uint8 (as samples are stored) reads as value / 255
        np.testing.assert_allclose(as_uint8.scores[name].value, report.scores[name].value,
                                   rtol=0.02, atol=2e-3)
        assert as_uint8.scores[name].floor == report.scores[name].floor  # cached, per size


def test_errors_name_the_field():
    with pytest.raises(ValueError, match=r"samples must have shape \(N, 8, 8, 1\)"):
        dq.digits_quality(np.zeros((8, 16, 16, 1)))
    with pytest.raises(ValueError, match="floor_draws must be >= 2"):
        dq.digits_quality(np.zeros((8, 8, 8, 1)), floor_draws=1)
    with pytest.raises(ValueError, match=r"at least max\(k \+ 1, 3\) = 4"):
        dq.digits_quality(np.zeros((3, 8, 8, 1)))
