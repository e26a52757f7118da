"""A mask drawn onto any face: real faces with gender and age labels rarely wear one, and the
competition's photos mostly do. Placed from YuNet's five landmarks (eyes, nose tip, mouth
corners) in the image's own pixels, or from a fixed face frame where they are unknown; random
shape, colour, texture and height (over the nose, below it, on the chin). As an augmentation
(gender, age) it never touches a label: gender and age do not change under a mask. For the mask
model (``draw=masks`` sources) the label says the height: real faces become worn, worn-wrongly
and bare examples.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from facet.combine import MASK

# Where an aligned face crop has its landmarks (x, y as shares of the side; YuNet's order:
# the eye and mouth corner on the image's left first), the median over maskfaces' faces.
FACE_FRAME = np.array([[0.28, 0.34], [0.70, 0.34], [0.47, 0.56], [0.31, 0.73], [0.67, 0.73]],
                      np.float32)
HEIGHTS = ("over_nose", "below_nose", "chin")
SHAPES = ("surgical", "kn95", "cloth")
# (shape, x across the face -1..1, y from the mask's top 0 to its bottom 1)
OUTLINES = {
    "surgical": [(-1, 0), (1, 0), (1, 0.75), (0.7, 1), (-0.7, 1), (-1, 0.75)],
    "kn95": [(-1, 0.15), (0, -0.08), (1, 0.15), (0.95, 0.7), (0, 1.06), (-0.95, 0.7)],
    "cloth": [(np.cos(t), 0.5 - 0.55 * np.sin(t) * (0.8 if np.sin(t) > 0 else 1.0))
              for t in np.linspace(0, 2 * np.pi, 24, endpoint=False)],
}
PALETTE = np.array([[235, 238, 240], [150, 190, 225], [30, 30, 35], [120, 125, 130],
                    [40, 55, 95], [230, 170, 185], [90, 130, 90]], np.float32)


def landmarks_or_frame(landmarks: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """(5, 2) landmarks in pixels: the given ones, or the fixed face frame where they are
    missing (None or NaN)."""
    if landmarks is None or not np.isfinite(landmarks).all():
        return FACE_FRAME * np.array([width, height], np.float32)
    return np.asarray(landmarks, np.float32)


def occlude(image: np.ndarray, landmarks: np.ndarray | None, rng: np.random.Generator,
            height: str | None = None) -> np.ndarray:
    """A copy of ``image`` (uint8 HWC RGB) with a mask drawn over the lower face."""
    h, w = image.shape[:2]
    eyes_l, eyes_r, nose, mouth_l, mouth_r = landmarks_or_frame(landmarks, h, w)
    eyes, mouth = (eyes_l + eyes_r) / 2, (mouth_l + mouth_r) / 2
    span = np.linalg.norm(eyes - mouth)  # eyes to mouth: the face's vertical scale
    if span < 2:
        return image
    down = (mouth - eyes) / span
    across = np.array([-down[1], down[0]], np.float32)  # perpendicular, toward the image's right
    if across[0] < 0:
        across = -across
    height = height or HEIGHTS[rng.choice(3, p=[0.6, 0.2, 0.2])]
    top = {"over_nose": nose + (eyes - nose) * rng.uniform(0.35, 0.6),
           "below_nose": nose + down * span * rng.uniform(0.08, 0.18),
           "chin": mouth + down * span * rng.uniform(0.1, 0.3)}[height]
    bottom = mouth + down * span * rng.uniform(0.75, 0.95)
    half = np.linalg.norm(eyes_r - eyes_l) * rng.uniform(0.85, 1.1)
    centre_shift = (nose - eyes) @ across  # a turned face: the mask follows the nose
    outline = OUTLINES[SHAPES[rng.integers(len(SHAPES))]]
    points = np.array([top + (bottom - top) * y + across * (x * half + centre_shift * (1 - y) * 0.5)
                       for x, y in outline], np.float32)
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, [np.round(points * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
    cloth = _texture(h, w, rng, top, down, span)
    alpha = cv2.GaussianBlur(region, (3, 3), 0).astype(np.float32)[..., None] / 255
    out = image.astype(np.float32) * (1 - alpha) + cloth * alpha
    if rng.random() < 0.5:  # ear loops from the mask's upper corners to the face's sides
        for side in (-1, 1):
            corner = points[np.argmax(points @ across * side)]
            end = corner + across * side * half * 0.3 - down * span * 0.25
            cv2.line(out, tuple(np.round(corner).astype(int)), tuple(np.round(end).astype(int)),
                     cloth[0, 0].tolist(), max(1, round(span / 40)), cv2.LINE_AA)
    return np.clip(out, 0, 255).astype(np.uint8)


def _texture(h: int, w: int, rng: np.random.Generator, top, down, span) -> np.ndarray:
    """The mask's cloth: a palette colour (or any colour), shaded, with pleats, noise or dots."""
    colour = PALETTE[rng.integers(len(PALETTE))] if rng.random() < 0.75 else rng.uniform(0, 255, 3)
    colour = np.clip(colour * rng.uniform(0.8, 1.15) + rng.normal(0, 8, 3), 0, 255)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    along = ((xs - top[0]) * down[0] + (ys - top[1]) * down[1]) / span  # 0 at the top edge
    shade = 1.0 - 0.18 * np.clip(along, 0, 1.2) * rng.uniform(0.3, 1.0)
    cloth = colour[None, None] * shade[..., None]
    kind = rng.integers(4)
    if kind == 1:  # pleats across the mask
        cloth *= (1 - 0.12 * (np.sin(along * np.pi * rng.uniform(5, 9)) > 0.7))[..., None]
    elif kind == 2:  # woven noise
        cloth += rng.normal(0, rng.uniform(4, 14), (h, w, 1))
    elif kind == 3:  # a printed pattern
        step = max(3, int(span * rng.uniform(0.12, 0.3)))
        dots = ((xs.astype(int) // step + ys.astype(int) // step) % 2).astype(np.float32)
        cloth = cloth * (1 - 0.35 * dots[..., None]) + rng.uniform(0, 255, 3) * 0.35 * dots[..., None]
    return cloth


#: The mask state a drawn mask shows (``draw=masks`` sources): worn over the nose (wear);
#: below the nose or on the chin (incorrect); none (not_wear).
DRAWN_HEIGHTS = {MASK.index("wear"): ("over_nose",), MASK.index("incorrect"): ("below_nose", "chin")}


def draw_for_label(image: np.ndarray, landmarks: np.ndarray, code: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``image`` with a mask drawn as the mask-state ``code`` says (:data:`DRAWN_HEIGHTS`)."""
    heights = DRAWN_HEIGHTS.get(code)
    if heights is None:
        return image
    return occlude(image, landmarks, rng, heights[rng.integers(len(heights))])


class MaskOcclusion(A.ImageOnlyTransform):
    """The ``mask`` augmentation group: with probability ``p``, a drawn mask on an image whose
    row says ``maskable`` (no mask is known to be worn already), placed from the row's
    ``landmarks`` ((5, 2) pixels of the image as given to the pipeline, NaN: unknown). Put it
    before the geometric steps, so that they move the mask with the face."""

    def get_params_dependent_on_data(self, params, data):
        return {"landmarks": data.get("landmarks"), "maskable": data.get("maskable", True)}

    def apply(self, img, landmarks=None, maskable=True, **params):
        return occlude(img, landmarks, self.random_generator) if maskable else img

    def get_transform_init_args_names(self):
        return ()
