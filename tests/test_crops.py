"""Crop geometry and selection, on plain arrays: what a dataset builder would check in the crops they get."""
from __future__ import annotations

import numpy as np

from anitrack.crops import best_sample, clip_box, decode, encode, even_sample, face_anchored_box, upper_body_box


def test_face_anchored_box_grows_upward_for_hair_and_pads_every_side():
    # a 40x50 face at (100, 200): 0.45 x 50 = 22.5 px more above, then 10 px padding all round
    box = face_anchored_box(np.array([100, 200, 140, 250]), 854, 480, up_ratio=0.45, pad=10)
    assert box.tolist() == [90, 168, 150, 260]  # 200 - 22.5 - 10 = 167.5 rounds to 168 (half to even)


def test_boxes_are_clipped_to_the_frame_and_never_empty():
    assert face_anchored_box(np.array([-30, 5, 20, 40]), 100, 80, 0.45, 25).tolist() == [0, 0, 45, 65]
    assert face_anchored_box(np.array([90, 70, 120, 95]), 100, 80, 0.45, 25).tolist() == [65, 34, 100, 80]
    # a box wholly outside the frame still yields a 1-pixel box inside it, so a crop is never empty
    x1, y1, x2, y2 = clip_box(np.array([150.0, 90.0, 160.0, 95.0]), 100, 80).tolist()
    assert 0 <= x1 < x2 and 0 <= y1 < y2 and x2 - x1 >= 1 and y2 - y1 >= 1


def test_upper_body_fallback_is_the_top_half_of_the_person():
    assert upper_body_box(np.array([200, 100, 300, 400]), 854, 480, pad=0).tolist() == [200, 100, 300, 250]


def test_even_sample_keeps_first_and_last_and_spreads_the_rest():
    assert even_sample(list(range(10)), 20) == list(range(10))
    picked = even_sample(list(range(100)), 5)
    assert picked[0] == 0 and picked[-1] == 99 and len(picked) == 5
    assert np.ptp(np.diff(picked)) <= 1  # evenly spaced


def test_best_sample_takes_the_clearest_faces_in_their_order_or_spreads_without_faces():
    items = list("abcdef")
    assert best_sample(items, [0.1, 5.0, 0.2, 4.0, 3.0, 0.0], 3) == ["b", "d", "e"]
    assert best_sample(items, [0.0] * 6, 3) == even_sample(items, 3)


def test_encoded_crops_decode_to_the_same_size_and_nearly_the_same_pixels():
    rng = np.random.default_rng(0)
    rgb = (rng.random((37, 29, 3)) * 40 + np.linspace(0, 200, 29)[None, :, None]).astype(np.uint8)
    assert (decode(encode(rgb, "png")) == rgb).all()
    for fmt in ("webp", "jpeg"):
        back = decode(encode(rgb, fmt))
        assert back.shape == rgb.shape and np.abs(back.astype(int) - rgb).mean() < 12
