"""client.compare: the agreement and per-class IoU of two masks (the figures `tfdeploy ui`
shows in compare mode, and that promotion decisions will use)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tfdeploy.client.compare import compare_masks, difference_map
from tfdeploy.client.masks import palette_image


def test_identical_masks_agree_fully():
    mask = np.array([[0, 1], [2, 2]], np.uint8)
    result = compare_masks(mask, mask.copy())
    assert result.agreement == 1.0
    assert result.iou == {0: 1.0, 1: 1.0, 2: 1.0}
    assert result.mean_iou == 1.0
    assert result.pixels_a == result.pixels_b == {0: 1, 1: 1, 2: 2}


def test_agreement_and_iou_by_hand():
    a = np.array([[0, 0, 1, 1],
                  [0, 0, 1, 1]], np.uint8)
    b = np.array([[0, 1, 1, 1],
                  [0, 0, 1, 3]], np.uint8)
    result = compare_masks(a, b)
    assert result.pixels == 8 and result.agreeing == 6
    assert result.agreement == pytest.approx(6 / 8)
    # class 0: a has 4, b has 3, both 3 -> 3/4; class 1: a 4, b 4, both 3 -> 3/5
    # class 3: only in b -> 0
    assert result.iou == pytest.approx({0: 3 / 4, 1: 3 / 5, 3: 0.0})
    assert result.mean_iou == pytest.approx((3 / 4 + 3 / 5 + 0) / 3)
    assert result.to_json()["iou"] == {"0": 0.75, "1": 0.6, "3": 0.0}


def test_palette_images_and_arrays_give_the_same_figures(rng):
    a = rng.integers(0, 5, (37, 53)).astype(np.uint8)
    b = np.where(rng.random((37, 53)) < 0.1, 4, a).astype(np.uint8)
    from_arrays = compare_masks(a, b)
    from_images = compare_masks(palette_image(a), palette_image(b))
    assert from_arrays == from_images
    assert from_arrays.agreement == pytest.approx(np.mean(a == b))


def test_size_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in size: 3x2 and 2x3"):
        compare_masks(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        compare_masks(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 3), np.uint8))


def test_difference_map_marks_only_disagreeing_pixels():
    a = np.array([[0, 1], [2, 0]], np.uint8)
    b = np.array([[0, 2], [2, 1]], np.uint8)
    diff = difference_map(Image.fromarray(a), b)
    assert diff.shape == (2, 2, 3)
    assert (diff[0, 0] == 40).all() and (diff[1, 0] == 40).all()  # agree: grey
    assert tuple(diff[0, 1]) == (0, 128, 0)  # b says class 2: VOC green
    assert tuple(diff[1, 1]) == (128, 0, 0)  # b says class 1: VOC red
