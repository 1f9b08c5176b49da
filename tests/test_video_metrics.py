"""Video metrics: the Flax I3D against a PyTorch I3D of the piergiaj/pytorch-i3d layout (same
random weights, through the converter), FVD against a direct computation, the moving-digits
metric on synthesised clips, PSNR and SSIM against references.

The PyTorch I3D below is written here from the architecture (not shipped): module names and
state-dict keys of piergiaj's `InceptionI3d`, TensorFlow "SAME" padding computed per input size,
zero-padded max pools, a 2x7x7 average pool and a 1x1x1 logits convolution, logits averaged over
time. Test dependency: torch (CPU), as for tests/test_inception.py; the tests fail, not skip,
without it. The full-width network (224x224, 12.7M parameters) is marked slow; the fast tests run
the same code at 1/16 of the width.
"""

import time

import jax
import numpy as np
import pytest
import scipy.linalg

from score_sde.metrics import fvd as fvd_lib
from score_sde.metrics import i3d

# After the stem: (name, channels of b0, b1a, b1b, b2a, b2b, b3b) or (pool name, kernel, stride).
MIXED = (("Mixed_3b", (64, 96, 128, 16, 32, 32)), ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
         ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
         ("Mixed_4b", (192, 96, 208, 16, 48, 64)), ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
         ("Mixed_4d", (128, 128, 256, 24, 64, 64)), ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
         ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
         ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
         ("Mixed_5b", (256, 160, 320, 32, 128, 128)), ("Mixed_5c", (384, 192, 384, 48, 128, 128)))


def torch_i3d(torch, num_classes=400, divisor=1):
    """A PyTorch I3D with piergiaj's state-dict layout; `divisor` divides every width."""
    nn, F = torch.nn, torch.nn.functional

    def c(n):
        return max(1, n // divisor)

    def pad_same(x, kernel, stride):
        pads = []
        for axis in (2, 1, 0):  # F.pad lists the last axis (W) first
            size, k, s = x.shape[2 + axis], kernel[axis], stride[axis]
            total = max(k - (s if size % s == 0 else size % s), 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    class Unit(nn.Module):
        def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), head=False):
            super().__init__()
            self.kernel, self.stride, self.head = kernel, stride, head
            self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=head)
            if not head:
                self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

        def forward(self, x):
            x = self.conv3d(pad_same(x, self.kernel, self.stride))
            return x if self.head else F.relu(self.bn(x))

    class Pool(nn.Module):
        def __init__(self, kernel, stride):
            super().__init__()
            self.kernel, self.stride = kernel, stride

        def forward(self, x):
            return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)

    class Block(nn.Module):
        def __init__(self, cin, ch):
            super().__init__()
            self.b0, self.b1a = Unit(cin, ch[0]), Unit(cin, ch[1])
            self.b1b = Unit(ch[1], ch[2], (3, 3, 3))
            self.b2a, self.b2b = Unit(cin, ch[3]), Unit(ch[3], ch[4], (3, 3, 3))
            self.b3a, self.b3b = Pool((3, 3, 3), (1, 1, 1)), Unit(cin, ch[5])

        def forward(self, x):
            return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                              self.b3b(self.b3a(x))], dim=1)

    class I3D(nn.Module):
        def __init__(self):
            super().__init__()
            self.names = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
                          "MaxPool3d_3a_3x3"]
            self.Conv3d_1a_7x7 = Unit(3, c(64), (7, 7, 7), (2, 2, 2))
            self.MaxPool3d_2a_3x3 = Pool((1, 3, 3), (1, 2, 2))
            self.Conv3d_2b_1x1 = Unit(c(64), c(64))
            self.Conv3d_2c_3x3 = Unit(c(64), c(192), (3, 3, 3))
            self.MaxPool3d_3a_3x3 = Pool((1, 3, 3), (1, 2, 2))
            cin = c(192)
            for name, *spec in MIXED:
                if name.startswith("MaxPool"):
                    setattr(self, name, Pool(*spec))
                else:
                    channels = [c(n) for n in spec[0]]
                    setattr(self, name, Block(cin, channels))
                    cin = channels[0] + channels[2] + channels[4] + channels[5]
                self.names.append(name)
            self.logits = Unit(cin, num_classes, head=True)

        def forward(self, x):  # (B, 3, T, 224, 224) in [-1, 1]
            for name in self.names:
                x = getattr(self, name)(x)
            x = F.avg_pool3d(x, (2, 7, 7), stride=1)
            return self.logits(x).squeeze(4).squeeze(3).mean(2), x.mean((2, 3, 4))

    return I3D().eval()


def random_state_dict(torch, model, calibration, seed=0):
    """Random weights (He-scaled convolutions, near-identity BatchNorm affine), and BatchNorm
    statistics of one batch of `calibration` inputs, as a trained network's would be: a narrow
    random network with arbitrary statistics may lose its signal to ReLUs (constant output)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in model.state_dict().items():
        shape = value.shape
        if key.endswith("conv3d.weight"):
            sd[key] = torch.randn(shape, generator=gen) * (2.0 / np.prod(shape[1:])) ** 0.5
        elif key.endswith("bn.weight"):
            sd[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("bn.bias") or key.endswith("conv3d.bias"):
            sd[key] = 0.2 * (torch.rand(shape, generator=gen) - 0.5)
        else:  # running statistics and counters: set below
            sd[key] = value
    model.load_state_dict(sd)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.momentum = 1.0  # running statistics := this batch's
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.asarray(calibration, np.float32)))
    model.eval()
    return {k: v.clone() for k, v in model.state_dict().items()}


def convert_with_cli(torch, state_dict, tmp_path):
    """The user's path: a .pt state dict converted by the CLI, loaded from the .npz."""
    pt, npz = tmp_path / "i3d.pt", tmp_path / "i3d.npz"
    torch.save(state_dict, pt)
    i3d.main(["--convert", str(pt), str(npz)])
    return npz


def assert_close_logits(got, ref, name):
    diff = np.max(np.abs(got - ref))
    scale = np.max(np.abs(ref))
    print(f"{name}: max |diff| {diff:.2e}, scale {scale:.2f}")
    assert scale > 0.05  # not degenerate
    assert diff <= 1e-4 * max(1.0, scale)


# --- I3D and FVD ---------------------------------------------------------------------------------


def reflect_indices(num_frames, length):
    """Frames 0..T-1, T-2, ..., 1, 0, 1, ... written out by walking back and forth."""
    out, t, step = [], 0, 1
    while len(out) < max(num_frames, length):
        out.append(t)
        if num_frames > 1 and not 0 <= t + step < num_frames:
            step = -step
        t = t + step if num_frames > 1 else 0
    return np.array(out)


def resize_tf1_reference(frames, size):
    """TF1's resize_bilinear (no half-pixel centres) pixel by pixel: (M, H, W, C). As in TF, the
    scale in / out and the source coordinate are float32 (its error grows with the size)."""
    m, h, w, c = frames.shape
    frames = frames.astype(np.float64)

    def axis_weights(n_in, n_out):
        table = []
        scale = np.float32(n_in) / np.float32(n_out)
        for o in range(n_out):
            src = float(np.float32(o) * scale)
            lo = int(np.floor(src))
            hi = min(lo + 1, n_in - 1)
            table.append((lo, hi, src - lo))
        return table

    rows = axis_weights(h, size)
    cols = axis_weights(w, size)
    tmp = np.stack([(1 - f) * frames[:, lo] + f * frames[:, hi] for lo, hi, f in rows], 1)
    return np.stack([(1 - f) * tmp[:, :, lo] + f * tmp[:, :, hi] for lo, hi, f in cols], 2)


def reference_i3d_input(clips_centered, min_frames=9):
    """The FVD preprocessing written independently: [-1, 1] grey clips -> (N, 3, T, 224, 224)."""
    x = np.clip((clips_centered.astype(np.float64) + 1) / 2, 0, 1)
    x = np.repeat(x, 3, axis=-1)[:, reflect_indices(x.shape[1], min_frames)]
    n, t, h, w, c = x.shape
    frames = resize_tf1_reference(x.reshape(n * t, h, w, c), 224)
    return (2 * frames - 1).reshape(n, t, 224, 224, c).transpose(0, 4, 1, 2, 3)


def random_clips(rng, n, brightness, contrast, shape=(6, 16, 16, 1)):
    """Clips in [-1, 1]: a brightness and a contrast drawn per clip times uniform noise."""
    a = rng.uniform(*brightness, (n, 1, 1, 1, 1))
    b = rng.uniform(*contrast, (n, 1, 1, 1, 1))
    return np.clip(a + b * rng.uniform(-1, 1, (n, *shape)), -1, 1).astype(np.float32)


class Memo:
    """A feature function that computes each distinct clip set once (the tests reuse them)."""

    def __init__(self, fn):
        self.fn, self.seen = fn, {}

    def __call__(self, clips, centered=False):
        key = (np.asarray(clips).tobytes(), centered)
        if key not in self.seen:
            self.seen[key] = self.fn(clips, centered=centered)
        return self.seen[key]


@pytest.fixture(scope="module")
def fvd_setup(tmp_path_factory):
    """A 1/32-width, 2-class I3D in PyTorch, converted by the CLI; two sets of 4 clips of 6
    frames of 16x16 grey in [-1, 1] through our pipeline (one compilation) and through the
    PyTorch model after an independent preprocessing."""
    import torch

    tmp_path = tmp_path_factory.mktemp("fvd")
    rng = np.random.default_rng(0)
    # Per-clip brightness and contrast: I3D averages over space and time, so clips of iid
    # noise would all get nearly the same features.
    real = random_clips(rng, 4, brightness=(-0.6, 0.2), contrast=(0.2, 0.8))
    fake = random_clips(rng, 4, brightness=(-0.2, 0.6), contrast=(0.1, 0.5))
    inputs = {"real": reference_i3d_input(real), "fake": reference_i3d_input(fake)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a narrow network: threads cost more than they save
    try:
        model = torch_i3d(torch, num_classes=2, divisor=32)
        sd = random_state_dict(torch, model, np.concatenate([inputs["real"], inputs["fake"]]))
        with torch.no_grad():
            ref = {name: [t.numpy() for t in model(torch.from_numpy(x.astype(np.float32)))]
                   for name, x in inputs.items()}
    finally:
        torch.set_num_threads(threads)
    npz = convert_with_cli(torch, sd, tmp_path)
    start = time.perf_counter()
    fn = Memo(fvd_lib.fvd_feature_fn(npz, batch_size=4))
    fn(real, centered=True)
    compile_and_run = time.perf_counter() - start
    start = time.perf_counter()
    fn(fake, centered=True)
    print(f"\nreduced I3D: compile + 4 clips {compile_and_run:.1f} s, "
          f"4 clips {time.perf_counter() - start:.1f} s")
    return dict(fn=fn, npz=npz, sd=sd, real=real, fake=fake, ref=ref)


def test_fvd_features_match_torch_reference(fvd_setup):
    """The reduced-width network and the preprocessing against the PyTorch model fed by an
    independent preprocessing (6 frames reflected to 9, 16x16 grey -> 224x224 RGB)."""
    fn = fvd_setup["fn"]
    for name in ("real", "fake"):
        ours = fn(fvd_setup[name], centered=True)
        ref_logits, ref_features = fvd_setup["ref"][name]
        assert np.std(ref_logits, axis=0).max() > 0.01 * np.abs(ref_logits).max()  # varies
        assert_close_logits(ours["logits"], ref_logits, f"{name} logits")
        assert_close_logits(ours["features"], ref_features, f"{name} features")


def direct_frechet(f1, f2):
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) with scipy's general matrix square root."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((f1.mean(0) - f2.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * root))


def test_fvd_matches_direct_computation(fvd_setup):
    fvd = fvd_lib.frechet_video_distance(fvd_setup["real"], fvd_setup["fake"], fvd_setup["fn"],
                                         centered=True)
    direct = direct_frechet(fvd_setup["ref"]["real"][0], fvd_setup["ref"]["fake"][0])
    print(f"FVD {fvd:.6f}, direct {direct:.6f}")
    assert direct > 1e-3
    assert abs(fvd - direct) <= 1e-4 * direct


def test_fvd_of_a_set_with_itself_is_zero_and_a_shifted_set_is_not(fvd_setup):
    real, fn = fvd_setup["real"], fvd_setup["fn"]
    same = fvd_lib.frechet_video_distance(real, real, fn, centered=True)
    shifted = fvd_lib.frechet_video_distance(real, np.clip(real + 0.5, -1, 1), fn, centered=True)
    print(f"FVD(real, real) = {same:.2e}, FVD(real, real + 0.5) = {shifted:.4f}")
    assert same <= 1e-8
    assert shifted > 1e-2


def test_fvd_feature_fn_of_a_path_is_built_once(fvd_setup):
    """A weights path is loaded and compiled once per process and set of options."""
    npz = fvd_setup["npz"]
    assert fvd_lib.fvd_feature_fn(npz, batch_size=4) is fvd_lib.fvd_feature_fn(str(npz),
                                                                               batch_size=4)
    assert fvd_lib.fvd_feature_fn(npz, batch_size=4) is not fvd_lib.fvd_feature_fn(npz)


def test_converter_drops_a_data_parallel_prefix(fvd_setup):
    plain = i3d.convert_pytorch_i3d_state_dict(fvd_setup["sd"])
    prefixed = i3d.convert_pytorch_i3d_state_dict(
        {f"module.{k}": v for k, v in fvd_setup["sd"].items()})
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(prefixed),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert i3d.i3d_model(plain) == i3d.InceptionI3D(num_classes=2, width_divisor=32)


@pytest.mark.slow
def test_i3d_matches_torch_reference_full_width(tmp_path):
    """Full width on a random 224x224 clip of 10 frames, with both stem convolutions."""
    import torch

    model = torch_i3d(torch)
    rng = np.random.default_rng(1)
    calibration = rng.uniform(-1, 1, (2, 3, 10, 224, 224)).astype(np.float32)
    sd = random_state_dict(torch, model, calibration)
    variables = i3d.load_i3d_variables(convert_with_cli(torch, sd, tmp_path))
    n_flax = sum(v.size for v in jax.tree_util.tree_leaves(variables["params"]))
    assert n_flax == sum(p.numel() for p in model.parameters()) == 12_697_264
    clip = rng.uniform(-1, 1, (1, 10, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        ref_logits, ref_features = model(torch.from_numpy(clip).permute(0, 4, 1, 2, 3))
    for by_frames in (False, True):
        apply = jax.jit(i3d.InceptionI3D(stem_by_frames=by_frames).apply)
        with jax.default_matmul_precision("highest"):
            out = apply(variables, clip)
            start = time.perf_counter()
            jax.block_until_ready(apply(variables, clip))
        print(f"stem_by_frames={by_frames}: {time.perf_counter() - start:.2f} s per clip")
        assert_close_logits(np.asarray(out["logits"]), ref_logits.numpy(), "logits")
        assert_close_logits(np.asarray(out["features"]), ref_features.numpy(), "features")


def test_stem_by_frames_equals_the_3d_convolution():
    frames, strides = 10, (2, 2, 2)  # the pipeline test runs 9 frames through it
    rng = np.random.default_rng(frames)
    x = rng.normal(size=(1, frames, 9, 8, 3)).astype(np.float32)
    kernel = rng.normal(size=(7, 5, 3, 3, 4)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        ref = jax.lax.conv_general_dilated(x, kernel, strides, "SAME",
                                           dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        got = i3d.conv3d_by_frames(x, kernel, strides)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-4)


@pytest.mark.parametrize("size", range(1, 12))
@pytest.mark.parametrize("kernel,stride", [(7, 2), (3, 2), (2, 2), (3, 1), (1, 1)])
def test_same_padding_is_tensorflows(size, kernel, stride):
    front, back = i3d.same_padding(size, kernel, stride)
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)  # TF's definition: ceil(n / s) outputs
    assert (front, back) == (total // 2, total - total // 2)
    assert (size + front + back - kernel) // stride + 1 == out


def test_frame_indices_rules():
    np.testing.assert_array_equal(fvd_lib.frame_indices(4, 9), [0, 1, 2, 3, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(fvd_lib.frame_indices(4, 9, "loop"), [0, 1, 2, 3, 0, 1, 2, 3, 0])
    np.testing.assert_array_equal(fvd_lib.frame_indices(4, 9, "edge"), [0, 1, 2, 3, 3, 3, 3, 3, 3])
    np.testing.assert_array_equal(fvd_lib.frame_indices(1, 3), [0, 0, 0])
    np.testing.assert_array_equal(fvd_lib.frame_indices(12, 9), np.arange(12))
    for t in range(1, 8):
        np.testing.assert_array_equal(fvd_lib.frame_indices(t, 16), reflect_indices(t, 16))
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        fvd_lib.frame_indices(4, 9, "mirror")


@pytest.mark.parametrize("in_size", [37, 300])  # 16 -> 224: the pipeline test
def test_resize_tf1_matches_pixel_by_pixel_reference(in_size):
    rng = np.random.default_rng(in_size)
    x = rng.uniform(size=(2, in_size, in_size + 5, 2)).astype(np.float32)
    got = np.asarray(fvd_lib.resize_bilinear_tf1(x, (224, 224)))
    np.testing.assert_allclose(got, resize_tf1_reference(x, 224), atol=1e-6)


def test_resize_tf1_keeps_source_pixels_at_integer_factors():
    x = np.random.default_rng(0).uniform(size=(1, 16, 16, 1)).astype(np.float32)
    got = np.asarray(fvd_lib.resize_bilinear_tf1(x, (224, 224)))
    # dst 14 i samples src i, up to the float32 coordinate: 14 i * float32(1 / 14) ~ i + 5e-8 i
    np.testing.assert_allclose(got[0, ::14, ::14], x[0], atol=1e-5)


def test_half_pixel_resize_is_torch_interpolate():
    import torch

    x = np.random.default_rng(0).uniform(size=(1, 16, 20, 3)).astype(np.float32)
    got = np.asarray(fvd_lib._i3d_input(x[None], "half_pixel"))[0]
    ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2),
                                          size=(224, 224), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(got, 2 * ref.permute(0, 2, 3, 1).numpy() - 1, atol=1e-5)


def test_i3d_errors_are_one_clear_line(tmp_path):
    missing = tmp_path / "i3d.npz"
    with pytest.raises(FileNotFoundError) as err:
        fvd_lib.frechet_video_distance(np.zeros((2, 9, 8, 8, 1)), np.zeros((2, 9, 8, 8, 1)),
                                       missing)
    message = str(err.value)
    assert "\n" not in message and str(missing) in message
    assert "params/Conv3d_1a_7x7/conv3d/kernel" in message and "--convert" in message
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"params/logits/kernel": np.zeros((32, 2)), "params/logits/bias": np.zeros(2),
                     "params/Conv3d_1a_7x7/conv3d/kernel": np.zeros((7, 7, 7, 3, 2))})
    with pytest.raises(ValueError, match="does not hold I3D weights") as err:
        i3d.load_i3d_variables(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert "missing ['batch_stats/" in str(err.value)
    other = tmp_path / "i3d.h5"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown I3D weights format"):
        i3d.load_i3d_variables(other)
    with pytest.raises(ValueError, match=r"T >= 9, 224, 224, 3\)") as err:
        i3d.InceptionI3D().apply({}, np.zeros((1, 8, 224, 224, 3), np.float32))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="min_frames must be >= 9"):
        fvd_lib.fvd_feature_fn({}, min_frames=8)
    with pytest.raises(ValueError, match="resize must be one of"):
        fvd_lib.fvd_feature_fn({}, resize="area")


# --- moving digits -------------------------------------------------------------------------------


def bouncing_digits(images, labels, n, frames, size, num_digits, seed, change_at=None):
    """Clips (n, frames, size, size, 1) in [0, 1]: digits moving by whole pixels, bouncing off the
    walls, drawn with max; labels (n, num_digits). With `change_at`, the first digit is replaced
    from that frame on by a digit of another class."""
    rng = np.random.default_rng(seed)
    clips = np.zeros((n, frames, size, size, 1), np.float32)
    chosen = rng.integers(len(images), size=(n, num_digits))
    hi = size - 8
    for i in range(n):
        other = rng.choice(np.flatnonzero(labels != labels[chosen[i, 0]]))
        for j in range(num_digits):
            pos, vel = rng.integers(0, hi + 1, 2), rng.choice([-2, -1, 1, 2], 2)
            for t in range(frames):
                image = images[other if j == 0 and change_at is not None and t >= change_at
                               else chosen[i, j]]
                y, x = pos
                clips[i, t, y:y + 8, x:x + 8] = np.maximum(clips[i, t, y:y + 8, x:x + 8], image)
                pos = pos + vel
                low, high = pos < 0, pos > hi
                pos = np.where(low, -pos, np.where(high, 2 * hi - pos, pos))
                vel = np.where(low | high, -vel, vel)
    return clips, labels[chosen]


@pytest.fixture(scope="module")
def digit_clips():
    from score_sde.metrics.digits_classifier import digits_split

    _, _, x_test, y_test = digits_split()
    return x_test, y_test


def com_patch(image):
    """The 8x8 patch of an 8x8 digit centred on its centre of mass (halves up), black outside."""
    grid = np.indices(image.shape)
    com = (grid * image).sum(axis=(1, 2)) / image.sum()
    top, left = np.floor(com - 3.5 + 0.5).astype(int)
    padded = np.pad(image, 8)
    return padded[8 + top:16 + top, 8 + left:16 + left]


def test_patches_of_a_moving_digit_are_the_same_along_the_clip(digit_clips):
    """A single digit moved by whole pixels: every frame's patch is the digit's own
    centre-of-mass patch (the centre of mass moves with the digit)."""
    from score_sde.metrics import moving_digits as md

    images, labels = digit_clips
    clips, _ = bouncing_digits(images, labels, 6, 10, 20, 1, seed=0)
    patches, apart = md.digit_patches(clips, num_digits=1)
    assert patches.shape == (6, 10, 1, 8, 8, 1) and apart.all()
    chosen = np.random.default_rng(0).integers(len(images), size=(6, 1))  # bouncing_digits'
    for n in range(6):
        expected = com_patch(images[chosen[n, 0], ..., 0])
        np.testing.assert_array_equal(patches[n, :, 0, ..., 0],
                                      np.broadcast_to(expected, (10, 8, 8)))
    centred = md.digit_patches(2 * clips - 1, num_digits=1, centered=True)[0]
    np.testing.assert_allclose(centred, patches, atol=1e-6)


def test_two_digits_are_found_apart(digit_clips):
    """Two digits on 32x32: where their patches are apart, the patches' multiset of classes is
    the placed digits' labels in nearly every frame."""
    from score_sde.metrics import moving_digits as md
    from score_sde.metrics.digits_classifier import digits_feature_fn

    images, labels = digit_clips
    clips, placed = bouncing_digits(images, labels, 16, 8, 32, 2, seed=1)
    patches, apart = md.digit_patches(clips, num_digits=2)
    logits = digits_feature_fn()(patches.reshape(-1, 8, 8, 1))["logits"]
    classes = np.sort(logits.argmax(-1).reshape(16, 8, 2), axis=-1)
    right = np.all(classes == np.sort(placed, axis=-1)[:, None], axis=-1)
    assert apart.mean() > 0.5
    assert right[apart].mean() >= 0.95


def test_identity_consistency_closed_form():
    from score_sde.metrics.moving_digits import identity_consistency

    kept = np.array([[3, 3, 3, 3], [1, 1, 7, 1]])[..., None]  # (2 clips, 4 frames, 1 digit)
    assert identity_consistency(kept) == (0.5, (1.0 + 0.75) / 2, 1.0)
    assert identity_consistency(kept, agreement=0.75)[0] == 1.0
    swapped = np.array([[[2, 5], [2, 5], [5, 2], [5, 2]]])  # two digits that swap places
    assert identity_consistency(swapped)[:2] == (1.0, 1.0)
    apart = np.array([[True, False, False, False], [True, True, True, False]])
    assert identity_consistency(kept, apart) == (0.0, 2 / 3, 0.5)  # clip 1 is not scored
    nan = identity_consistency(kept, np.zeros((2, 4), bool))
    assert np.isnan(nan[0]) and nan[2] == 0.0


def test_motion_energy_closed_form():
    from score_sde.metrics.moving_digits import motion_energy

    clips = np.zeros((2, 4, 8, 8, 1), np.float32)
    clips[:, 1::2] = 1.0  # every step changes every pixel by 1
    assert motion_energy(clips) == 1.0
    assert motion_energy(np.ones_like(clips)) == 0.0
    assert motion_energy(2 * clips - 1, centered=True) == 1.0


def test_moving_digits_metric_ranks_broken_clips_worse(digit_clips):
    """Against real clips: other real clips score near the data; frozen clips have no motion,
    clips whose digit turns into another lose identity, noise has a far larger FD."""
    from score_sde.metrics.moving_digits import moving_digits_metrics, moving_digits_reference

    images, labels = digit_clips
    # Many short clips: the FD of 128-d features needs many distinct digits.
    real, _ = bouncing_digits(images, labels, 96, 4, 16, 1, seed=2)
    other, _ = bouncing_digits(images, labels, 96, 4, 16, 1, seed=3)
    changed, _ = bouncing_digits(images, labels, 96, 4, 16, 1, seed=3, change_at=2)
    frozen = np.repeat(other[:, :1], 4, axis=1)
    noise = np.random.default_rng(0).uniform(size=other.shape).astype(np.float32)
    scores = {"other": moving_digits_metrics(other, real, num_digits=1)}
    reference = moving_digits_reference(real, num_digits=1)  # the real clips' part, once
    scores |= {name: moving_digits_metrics(clips, reference, num_digits=1) for name, clips in
               (("changed", changed), ("frozen", frozen), ("noise", noise))}
    for name, s in scores.items():
        print(name, {k: round(v, 3) for k, v in s.items()})
    good = scores["other"]
    assert good["identity"] == good["identity_data"] == 1.0
    assert 0.8 < good["motion_ratio"] < 1.25
    assert scores["frozen"]["motion_ratio"] == 0.0 and scores["frozen"]["identity"] == 1.0
    assert scores["changed"]["identity"] <= 0.2 and scores["changed"]["frame_agreement"] < 0.8
    assert scores["noise"]["digits_fd"] > 4 * good["digits_fd"]


def test_moving_digits_errors_are_one_line():
    from score_sde.metrics import moving_digits as md

    with pytest.raises(ValueError, match=r"\(N, T, H >= 8, W >= 8, 1\)"):
        md.digit_patches(np.zeros((1, 4, 16, 16, 3)), 1)
    with pytest.raises(ValueError, match="num_digits must be >= 1"):
        md.digit_patches(np.zeros((1, 4, 16, 16, 1)), 0)
    with pytest.raises(ValueError, match="shape"):
        md.motion_energy(np.zeros((4, 16, 16, 1)))


# --- PSNR and SSIM -------------------------------------------------------------------------------


def ssim_by_loops(x, y, data_range=1.0, size=11, sigma=1.5):
    """SSIM of two (H, W) images written out window by window (2-D Gaussian weights)."""
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            ma, mb = np.sum(w * a), np.sum(w * b)
            va, vb = np.sum(w * (a - ma) ** 2), np.sum(w * (b - mb) ** 2)
            cov = np.sum(w * (a - ma) * (b - mb))
            values.append((2 * ma * mb + c1) * (2 * cov + c2)
                          / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return np.mean(values)


def test_ssim_matches_window_by_window_reference():
    from score_sde.metrics.frame_quality import ssim

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 16, 19, 2))
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), 0, 1)
    got = ssim(x, y)
    ref = [np.mean([ssim_by_loops(x[n, ..., c], y[n, ..., c]) for c in range(2)])
           for n in range(2)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(ssim(x, x), 1.0)
    np.testing.assert_allclose(ssim(2 * x, 2 * y, data_range=2.0), got, rtol=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[:, :10], y[:, :10])


def test_ssim_matches_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    from score_sde.metrics.frame_quality import ssim

    rng = np.random.default_rng(1)
    x = rng.uniform(size=(32, 20, 3))
    y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1)
    ref = skimage_metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False, data_range=1.0,
                                                channel_axis=-1)
    assert abs(ssim(x, y) - ref) < 1e-12


def test_ssim_small_frames_take_the_stated_7x7_window():
    """window="auto": 11x11 where it fits (bit-identical to the default), else 7x7 with sigma
    1.5 * 7 / 11, checked window by window on 8x8 digits-sized frames; too small: one line."""
    from score_sde.metrics.frame_quality import SMALL_SSIM_WINDOW, ssim

    assert SMALL_SSIM_WINDOW == (7, 1.5 * 7 / 11)
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(3, 8, 9, 1))
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), 0, 1)
    ref = [ssim_by_loops(x[n, ..., 0], y[n, ..., 0], size=7, sigma=1.5 * 7 / 11) for n in range(3)]
    np.testing.assert_allclose(ssim(x, y, window="auto"), ref, rtol=1e-12)
    np.testing.assert_allclose(ssim(x, y, window=(7, 1.5 * 7 / 11)), ref, rtol=1e-12)
    assert not np.allclose(ssim(x, y, window=(5, 1.0)), ref, rtol=1e-3)  # the window matters
    big = rng.uniform(size=(2, 12, 13, 2))
    assert np.array_equal(ssim(big, big[::-1], window="auto"), ssim(big, big[::-1]))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x, y)  # the default window stays strict
    with pytest.raises(ValueError, match="at least 7x7 pixels"):
        ssim(x[:, :6], y[:, :6], window="auto")
    with pytest.raises(ValueError, match="odd size"):
        ssim(x, y, window=(6, 1.0))


def test_ssim_small_window_matches_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    from score_sde.metrics.frame_quality import ssim

    rng = np.random.default_rng(3)
    x = rng.uniform(size=(8, 8, 1))
    y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1)
    ref = skimage_metrics.structural_similarity(x, y, win_size=7, gaussian_weights=True,
                                                sigma=1.5 * 7 / 11, use_sample_covariance=False,
                                                data_range=1.0, channel_axis=-1)
    assert abs(ssim(x, y, window="auto") - ref) < 1e-12


def test_psnr_closed_form_and_cap():
    from score_sde.metrics.frame_quality import psnr

    target = np.full((3, 16, 16, 1), 0.5)
    offsets = np.array([0.1, 0.01, 0.0])[:, None, None, None]
    np.testing.assert_allclose(psnr(target + offsets, target), [20.0, 40.0, 100.0])
    assert psnr(target, target, max_db=60.0)[0] == 60.0
    np.testing.assert_allclose(psnr(2 * (target + 0.1), 2 * target, data_range=2.0)[0], 20.0)


def test_prediction_scores_mean_and_best_of_k():
    from score_sde.metrics.frame_quality import prediction_scores, ssim

    rng = np.random.default_rng(0)
    target = rng.uniform(0.2, 0.8, size=(2, 3, 12, 12, 1))
    offsets = np.array([0.1, 0.01, 0.001])  # sample k is off by offsets[k] everywhere
    samples = target[:, None] + offsets[None, :, None, None, None, None]
    scores = prediction_scores(samples, target)
    np.testing.assert_allclose(scores["psnr_mean"], np.mean([20.0, 40.0, 60.0]), rtol=1e-6)
    np.testing.assert_allclose(scores["psnr_best"], 60.0, rtol=1e-6)
    np.testing.assert_allclose(scores["psnr_per_frame"], np.full(3, 40.0), rtol=1e-6)  # float32
    per_sample = ssim(samples, np.broadcast_to(target[:, None], samples.shape)).mean(-1)
    np.testing.assert_allclose(scores["ssim_mean"], per_sample.mean())
    np.testing.assert_allclose(scores["ssim_best"], per_sample.max(1).mean())
    centred = prediction_scores(2 * samples - 1, 2 * target - 1, centered=True)
    for key in ("psnr_mean", "psnr_best", "ssim_mean", "ssim_best"):
        np.testing.assert_allclose(centred[key], scores[key], rtol=1e-5)
    identical = prediction_scores(target[:, None], target)
    assert identical["psnr_mean"] == 100.0 and identical["ssim_best"] == 1.0
    with pytest.raises(ValueError, match=r"\(N, K, T, H, W, C\)"):
        prediction_scores(target, target)
