"""Video data: the moving-digits generator (determinism, bounce, split), clip readers and the
tfds video path (mock data, no download), clips through the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from score_sde import data
from score_sde.configs.video.moving_digits import get_config
from score_sde.data import clips as clip_data
from score_sde.data import moving_digits as md


def _config(**data_fields):
    config = get_config()
    for k, v in data_fields.items():
        config.data[k] = v
    return config


def _source(split="train", **kw):
    fields = dict(num_clips=64, num_frames=12, canvas=16, num_digits=2, motion="bounce",
                  max_speed=3, seed=0)
    return md.MovingDigitsSource(split, **{**fields, **kw})


def test_clips_are_deterministic_by_seed_and_the_test_seed_is_fixed():
    a, b = _source(), _source()
    for i in (0, 5, 63):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    other = _source(seed=1)
    assert any(not np.array_equal(a[i]["image"], other[i]["image"]) for i in range(8))
    # the test split ignores the training seed
    for i in range(4):
        np.testing.assert_array_equal(_source("test", seed=0)[i]["image"],
                                      _source("test", seed=7)[i]["image"])
    clip = a[3]["image"]
    assert clip.shape == (12, 16, 16, 1) and clip.dtype == np.uint8 and clip.max() <= 16


@pytest.mark.parametrize("motion", md.MOTIONS)
def test_digits_stay_inside_and_bounce_off_the_walls(motion):
    src = _source(motion=motion, num_frames=40)
    limit = src.canvas - md.DIGIT_SIZE
    hits = 0
    for i in range(32):
        tr = src.trajectory(i)
        p, v = tr.positions, tr.velocities
        assert p.min() >= 0 and p.max() <= limit
        assert np.all(np.abs(v) >= 1) and np.all(np.abs(v) <= src.max_speed)
        for f in range(len(p) - 1):
            moved = p[f] + v[f]
            hit = (moved < 0) | (moved > limit)
            reflected = np.where(moved < 0, -moved, np.where(moved > limit, 2 * limit - moved,
                                                             moved))
            np.testing.assert_array_equal(p[f + 1], reflected)  # reflection at the walls
            away = np.where(moved < 0, 1, -1)  # the direction back inside
            assert np.all(np.sign(v[f + 1])[hit] == away[hit])  # flips at a wall
            if motion == "bounce":
                np.testing.assert_array_equal(v[f + 1], np.where(hit, -v[f], v[f]))
            else:  # a digit that hits nothing keeps its velocity
                still = ~hit.any(axis=1)
                np.testing.assert_array_equal(v[f + 1][still], v[f][still])
            hits += int(hit.sum())
    assert hits > 50  # the clips do meet the walls


def test_train_and_test_clips_use_their_own_digit_images():
    x_tr, _, x_te, _ = md.digits_integer_split()
    for split, own in (("train", x_tr), ("test", x_te)):
        src = _source(split, num_digits=1)
        for i in range(4):
            tr = src.trajectory(i)
            row, col = tr.positions[0, 0]
            window = src[i]["image"][0, row:row + 8, col:col + 8]
            np.testing.assert_array_equal(window, own[tr.digits[0]])
            assert src[i]["label"] == src.digit_labels(i)[0]


def test_moving_digits_through_the_pipeline():
    config = _config(num_frames=4)
    ds = data.get_dataset(config, "train", batch_size=4, process_index=0, process_count=1)
    batch = ds.batch(0)
    assert batch["image"].shape == (4, 4, 16, 16, 1) and batch["image"].dtype == np.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    np.testing.assert_array_equal(batch["image"], ds.batch(0)["image"])
    assert data.in_memory_source(ds.source) and ds.num_workers == 0


def test_the_flip_and_the_geometry_act_on_every_frame_of_a_clip():
    clip = np.random.default_rng(0).random((3, 6, 6, 1)).astype(np.float32)
    from score_sde.data.transforms import Geometry, augment

    class Heads:  # rng.random() < 0.5: flip
        def random(self, *a, **k):
            return 0.0

    flipped = augment(clip, 256, Heads(), random_flip=True, dequantize=False)
    np.testing.assert_array_equal(flipped, clip[:, :, ::-1])
    assert Geometry("resize", 4)(clip).shape == (3, 4, 4, 1)
    np.testing.assert_array_equal(Geometry("resize", 4)(clip)[1], Geometry("resize", 4)(clip[1]))


def test_clip_npz_and_frame_folders(tmp_path):
    from PIL import Image

    clips = np.random.default_rng(0).integers(0, 256, (5, 6, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", clips=clips)
    np.savez(tmp_path / "test.npz", clips=clips[:2])
    config = _config(dataset="clip_npz", data_dir=str(tmp_path), num_frames=3,
                     frame_stride=2)
    src = data.get_source(config, "train")
    assert len(src) == 5
    np.testing.assert_array_equal(src[1]["image"][..., 0], clips[1, 0:6:2])
    folder = tmp_path / "frames" / "test"
    for c in range(2):
        (folder / f"clip{c}").mkdir(parents=True)
        for f in range(4):
            Image.fromarray(clips[c, f]).save(folder / f"clip{c}" / f"{f:03d}.png")
    config = _config(dataset="clip_folders", data_dir=str(tmp_path / "frames"), num_frames=4)
    src = data.get_source(config, "test")
    np.testing.assert_array_equal(src[1]["image"][..., 0], clips[1, :4])
    config.data.num_frames = 5
    with pytest.raises(ValueError, match=r"has 4 frames, fewer than the 5 that "
                                         r"config.data.num_frames=5"):
        data.get_source(config, "test")[0]


def test_a_missing_clip_dataset_says_what_to_give(tmp_path):
    config = _config(dataset="clip_npz", data_dir=str(tmp_path / "nothing"))
    with pytest.raises(data.DatasetNotFoundError, match="config.data.data_dir"):
        data.get_source(config, "train")
    config = _config(dataset="moving_digits", max_speed=9)
    with pytest.raises(ValueError, match=r"config.data.max_speed=9 must be in 1..8"):
        data.get_source(config, "train")[0]


@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets", reason="the [tfds] extra is not installed")


def test_bair_through_the_tfds_path_with_mock_data(tfds):
    config = _config(dataset="bair", image_size=16, num_channels=3, num_frames=4)
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.get_dataset(config, "train", batch_size=2, process_index=0, process_count=1)
        batch = ds.batch(0)
    assert batch["image"].shape == (2, 4, 16, 16, 3)  # 30 frames of 64x64 -> 4 of 16x16


def test_a_tfds_video_dataset_that_is_not_prepared_says_how(tfds, tmp_path):
    config = _config(dataset="moving_mnist", data_dir=str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match=r"tfds build moving_mnist"):
        clip_data.clip_source(config, "train")
