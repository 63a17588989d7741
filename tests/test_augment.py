"""Training augmentation: shapes and ranges, image and lung mask moved together, randomness."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pneumo import config
from pneumo.data import augment

SIZE = config.IMAGE_SIZE


def _blob_pair():
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    mask = (((yy - 100) / 60.0) ** 2 + ((xx - 90) / 40.0) ** 2 <= 1).astype("float32")
    image = np.repeat(mask[..., None] * 255.0, 3, axis=-1)
    return tf.constant(image), tf.constant(mask[..., None])


def test_geometry_moves_image_and_mask_together():
    tf.random.set_seed(0)
    image, mask = _blob_pair()
    for _ in range(10):
        cropped_image, cropped_mask = augment.crop_together(image, mask)
        rotated_image, rotated_mask = augment.rotate_together(cropped_image, cropped_mask)
        from_image = rotated_image.numpy()[..., 0] >= 127.5
        agreement = np.mean(from_image == rotated_mask.numpy()[..., 0].astype(bool))
        assert agreement > 0.995


def test_augment_example_keeps_shape_range_and_changes_the_image():
    tf.random.set_seed(1)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (SIZE, SIZE, 3)).astype("uint8"))
    mask = tf.constant(np.ones((SIZE, SIZE, 1), "uint8"))
    outs = [augment.augment_example(image, mask) for _ in range(4)]
    for x, m in outs:
        assert x.shape == (SIZE, SIZE, 3) and m.shape == (SIZE, SIZE, 1)
        assert float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= 255
        assert set(np.unique(m.numpy())) <= {0.0, 1.0}
    assert not np.allclose(outs[0][0].numpy(), outs[1][0].numpy())


def test_crop_box_stays_within_its_limits():
    tf.random.set_seed(2)
    for _ in range(200):
        y1, x1, y2, x2 = augment.random_crop_box().numpy()
        area = (y2 - y1) * (x2 - x1)
        assert augment.KEEP_AREA[0] - 1e-6 <= area <= 1 + 1e-6
        assert -augment.MAX_SHIFT - 1e-6 <= y1 and y2 <= 1 + augment.MAX_SHIFT + 1e-5
        assert -augment.MAX_SHIFT - 1e-6 <= x1 and x2 <= 1 + augment.MAX_SHIFT + 1e-5


def test_mild_reencoding_stays_close_and_keeps_the_mask_aligned():
    tf.random.set_seed(3)
    image, mask = _blob_pair()
    changed = 0
    for _ in range(20):
        x, m = augment.mild_reencoding(image, mask)
        assert x.shape == (SIZE, SIZE, 3) and m.shape == (SIZE, SIZE, 1)
        agreement = np.mean((x.numpy()[..., 0] >= 127.5) == m.numpy()[..., 0].astype(bool))
        assert agreement > 0.99
        # at most a 6 % border cut: the blob's area changes by less than a quarter
        assert 0.8 < float(tf.reduce_sum(m)) / float(tf.reduce_sum(mask)) < 1.25
        changed += not np.array_equal(x.numpy(), image.numpy())
    assert changed >= 10  # crop p 0.5, JPEG p 0.75: nearly every copy differs


def test_flip_together_mirrors_image_and_mask_alike():
    import numpy as np
    import tensorflow as tf

    from pneumo.data.augment import flip_together

    image = tf.constant(np.arange(2 * 3 * 3, dtype="float32").reshape(2, 3, 3))
    mask = tf.constant(np.array([[[1.0], [0.0], [0.0]], [[1.0], [0.0], [0.0]]], dtype="float32"))
    flipped, fmask = flip_together(image, mask, 1.0)
    np.testing.assert_array_equal(flipped.numpy(), image.numpy()[:, ::-1])
    np.testing.assert_array_equal(fmask.numpy(), mask.numpy()[:, ::-1])
    same, smask = flip_together(image, mask, 0.0)
    np.testing.assert_array_equal(same.numpy(), image.numpy())
    np.testing.assert_array_equal(smask.numpy(), mask.numpy())
