"""Training augmentation against the film's shortcuts (TensorFlow ops, one example at a time).

Read top to bottom, :func:`augment_example` does:

1. framing: a random zoom-in crop that keeps 50-100 % of the area with aspect jitter, and
   translations that may move the radiograph partly out of the frame, applied to the image and
   its lung mask together (so borders, abdomen and the laterality marker stop being reliable);
2. a small rotation (again image and mask together);
3. acquisition: down-then-up resizing with random interpolation, blur or sharpening, JPEG
   re-encoding over a wide quality range or none at all (lossless input), gamma, contrast,
   brightness and noise.

:func:`mild_reencoding` makes the second view of the stability term (``train --stability``): the
same augmented image again, with a small border crop and/or a JPEG re-encoding, the kind of
difference there is between a radiograph's copies in the wild (see ``benchmarks/robustness.py``).

Everything is applied the same way to NORMAL and PNEUMONIA images. No flips by default;
``augment_example(..., hflip=p)`` mirrors image and mask left-right with probability p first
(``train --hflip``, issue #25: without flips a model can learn a side prior for free, and its
heat map then shows one lung whatever the film). Images are float32 RGB 0-255, masks float32
0/1, both (224, 224, C).
"""

from __future__ import annotations

import math

import tensorflow as tf

from pneumo import config

KEEP_AREA = (0.5, 1.0)  # share of the image a crop keeps
ASPECT_JITTER = 1.25  # crop aspect ratio within [1/x, x]
CROP_PROBABILITY = 0.8
MAX_SHIFT = 0.1  # of the side: how far a crop window may reach outside the image
MAX_ROTATION_DEGREES = 8.0
RESIZE_PROBABILITY = 0.5
RESIZE_SCALE = (0.35, 1.0)
BLUR_PROBABILITY = 0.25
SHARPEN_PROBABILITY = 0.15
JPEG_PROBABILITY = 0.5
JPEG_QUALITY = (30, 95)
GAMMA = (0.7, 1.4)
CONTRAST = (0.7, 1.3)
BRIGHTNESS = 0.1  # of the range
NOISE_PROBABILITY = 0.3
NOISE_STD = 6.0  # grey levels, at most
MILD_CROP_PROBABILITY = 0.5
MILD_CROP_MAX = 0.06  # of the side, cut from each border independently
MILD_JPEG_PROBABILITY = 0.75  # else the pixels stay as they are (lossless)


def _uniform(lo: float, hi: float) -> tf.Tensor:
    return tf.random.uniform([], lo, hi)


def _chance(p: float) -> tf.Tensor:
    return tf.random.uniform([]) < p


def random_crop_box() -> tf.Tensor:
    """[y1, x1, y2, x2] in 0..1 image coordinates (may reach outside the image by MAX_SHIFT)."""
    area = _uniform(*KEEP_AREA)
    log_ratio = _uniform(-math.log(ASPECT_JITTER), math.log(ASPECT_JITTER))
    ratio = tf.exp(log_ratio)
    h = tf.minimum(tf.sqrt(area / ratio), 1.0)
    w = tf.minimum(tf.sqrt(area * ratio), 1.0)
    full = tf.logical_not(_chance(CROP_PROBABILITY))
    h = tf.where(full, 1.0, h)
    w = tf.where(full, 1.0, w)
    y1 = _uniform(-MAX_SHIFT, 1.0 - h + MAX_SHIFT + 1e-6)
    x1 = _uniform(-MAX_SHIFT, 1.0 - w + MAX_SHIFT + 1e-6)
    return tf.stack([y1, x1, y1 + h, x1 + w])


def _crop_box_together(image: tf.Tensor, mask: tf.Tensor, box: tf.Tensor
                       ) -> tuple[tf.Tensor, tf.Tensor]:
    """Crop image (H, W, 3) and mask (H, W, 1) to ``box`` [y1, x1, y2, x2], back at 224x224."""
    stacked = tf.concat([image, mask * 255.0], axis=-1)[None]
    size = [config.IMAGE_SIZE, config.IMAGE_SIZE]
    out = tf.image.crop_and_resize(stacked, box[None], [0], size, method="bilinear")[0]
    return out[..., :3], tf.cast(out[..., 3:] >= 127.5, tf.float32)


def crop_together(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The same random crop of image (H, W, 3) and mask (H, W, 1), back at 224x224."""
    return _crop_box_together(image, mask, random_crop_box())


def rotate_together(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A small random rotation about the centre, zeros outside (image and mask alike)."""
    angle = _uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES) * math.pi / 180.0
    size = float(config.IMAGE_SIZE)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx = cy = (size - 1.0) / 2.0
    # Output (x, y) -> input (a0 x + a1 y + a2, b0 x + b1 y + b2)
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])[None]
    stacked = tf.concat([image, mask * 255.0], axis=-1)[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=stacked, transforms=transform, output_shape=tf.shape(stacked)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    return out[..., :3], tf.cast(out[..., 3:] >= 127.5, tf.float32)


def _resize_down_up(image: tf.Tensor) -> tf.Tensor:
    size = config.IMAGE_SIZE
    small = tf.cast(tf.round(size * _uniform(*RESIZE_SCALE)), tf.int32)
    method = tf.random.uniform([], 0, 3, dtype=tf.int32)
    down = tf.switch_case(method, [
        lambda: tf.image.resize(image, [small, small], method="area"),
        lambda: tf.image.resize(image, [small, small], method="bilinear", antialias=True),
        lambda: tf.image.resize(image, [small, small], method="nearest"),
    ])
    up_cubic = _chance(0.5)
    return tf.cond(up_cubic,
                   lambda: tf.image.resize(down, [size, size], method="bicubic"),
                   lambda: tf.image.resize(down, [size, size], method="bilinear"))


def _filter3(image: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    k = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    return tf.nn.depthwise_conv2d(image[None], k, [1, 1, 1, 1], "SAME")[0]


def _blur(image: tf.Tensor) -> tf.Tensor:
    sigma = _uniform(0.4, 1.2)
    x = tf.range(-2.0, 3.0)
    g = tf.exp(-(x**2) / (2.0 * sigma**2))
    g = g / tf.reduce_sum(g)
    return _filter3(image, g[:, None] * g[None, :])


def _sharpen(image: tf.Tensor) -> tf.Tensor:
    amount = _uniform(0.2, 0.8)
    return image + amount * (image - _blur(image))


def _jpeg(image: tf.Tensor) -> tf.Tensor:
    quality = tf.random.uniform([], JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, dtype=tf.int32)
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.cast(tf.image.adjust_jpeg_quality(pixels, quality), tf.float32)


def acquisition(image: tf.Tensor) -> tf.Tensor:
    """Resizing, filtering, compression, exposure and noise (image only, 0-255 in and out)."""
    image = tf.cond(_chance(RESIZE_PROBABILITY), lambda: _resize_down_up(image), lambda: image)
    image = tf.cond(_chance(BLUR_PROBABILITY), lambda: _blur(image), lambda: image)
    image = tf.cond(_chance(SHARPEN_PROBABILITY), lambda: _sharpen(image), lambda: image)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image = tf.cond(_chance(JPEG_PROBABILITY), lambda: _jpeg(image), lambda: image)
    x = image / 255.0
    x = tf.pow(tf.maximum(x, 0.0), _uniform(*GAMMA))
    mean = tf.reduce_mean(x)
    x = (x - mean) * _uniform(*CONTRAST) + mean + _uniform(-BRIGHTNESS, BRIGHTNESS)
    image = x * 255.0
    noise = tf.random.normal(tf.shape(image[..., :1]), stddev=_uniform(0.0, NOISE_STD))
    image = tf.cond(_chance(NOISE_PROBABILITY), lambda: image + noise, lambda: image)
    return tf.clip_by_value(image, 0.0, 255.0)


def flip_together(image: tf.Tensor, mask: tf.Tensor, probability: float
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror image and mask left-right together with the given probability."""
    if probability <= 0:
        return image, mask
    return tf.cond(_chance(probability),
                   lambda: (tf.reverse(image, [1]), tf.reverse(mask, [1])),
                   lambda: (image, mask))


def augment_example(image: tf.Tensor, mask: tf.Tensor, hflip: float = 0.0
                    ) -> tuple[tf.Tensor, tf.Tensor]:
    """One training example: (optional left-right flip), framing, rotation, acquisition. See the
    module docstring."""
    image = tf.cast(image, tf.float32)
    mask = tf.cast(mask, tf.float32)
    image, mask = flip_together(image, mask, hflip)
    image, mask = crop_together(image, mask)
    image, mask = rotate_together(image, mask)
    image = acquisition(image)
    image = tf.ensure_shape(image, [config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS])
    return image, tf.ensure_shape(mask, [config.IMAGE_SIZE, config.IMAGE_SIZE, 1])


def mild_reencoding(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Another copy of an (augmented) example: maybe a small border crop, maybe a JPEG re-encoding."""
    cuts = tf.random.uniform([4], 0.0, MILD_CROP_MAX)
    box = tf.where(_chance(MILD_CROP_PROBABILITY),
                   tf.stack([cuts[0], cuts[1], 1.0 - cuts[2], 1.0 - cuts[3]]),
                   tf.constant([0.0, 0.0, 1.0, 1.0]))
    image, mask = _crop_box_together(image, mask, box)
    image = tf.cond(_chance(MILD_JPEG_PROBABILITY), lambda: _jpeg(image), lambda: image)
    image = tf.ensure_shape(image, [config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS])
    return image, tf.ensure_shape(mask, [config.IMAGE_SIZE, config.IMAGE_SIZE, 1])
