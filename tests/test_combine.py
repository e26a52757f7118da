import itertools

import numpy as np
import pytest

from facet.combine import (AGE, GENDER, MASK, N_CLASSES, AgeRule, class_names, combine_labels,
                           combine_probs, encode, parse_code, split_labels)


def test_encode_decode_exhaustive():
    seen = set()
    for m, g, a in itertools.product(range(3), range(2), range(3)):
        label = encode(m, g, a)
        assert label == 6 * m + 3 * g + a
        assert tuple(int(c[0]) for c in split_labels([label])) == (m, g, a)
        seen.add(label)
    assert seen == set(range(N_CLASSES))
    assert [class_names()[encode(m, g, a)] for m, g, a in [(2, 1, 2)]] == ["not_wear/female/>=60"]


def test_vectorised_rule_matches_scalar():
    labels = np.arange(N_CLASSES)
    m, g, a = split_labels(labels)
    assert combine_labels(m, g, a).tolist() == labels.tolist()
    assert [encode(*codes) for codes in zip(m, g, a)] == labels.tolist()


@pytest.mark.parametrize("bad", [(3, 0, 0), (0, 2, 0), (0, 0, 3), (-1, 0, 0)])
def test_encode_rejects_out_of_range(bad):
    with pytest.raises(ValueError):
        encode(*bad)


def test_split_rejects_out_of_range():
    with pytest.raises(ValueError):
        split_labels([18])
    with pytest.raises(ValueError):
        split_labels([0, 18])


def test_combine_probs_is_the_product_in_class_order():
    rng = np.random.default_rng(0)
    pm, pg, pa = (rng.dirichlet(np.ones(k), size=50) for k in (len(MASK), len(GENDER), len(AGE)))
    joint = combine_probs(pm, pg, pa)
    assert joint.shape == (50, 18)
    np.testing.assert_allclose(joint.sum(1), 1.0, atol=1e-5)
    for m, g, a in itertools.product(range(3), range(2), range(3)):
        np.testing.assert_allclose(joint[:, encode(m, g, a)], pm[:, m] * pg[:, g] * pa[:, a],
                                   rtol=1e-5)
    assert (joint.argmax(1) == combine_labels(pm.argmax(1), pg.argmax(1), pa.argmax(1))).all()


def test_combine_probs_checks_shapes():
    with pytest.raises(ValueError, match="gender"):
        combine_probs(np.ones((2, 3)) / 3, np.ones((2, 3)) / 3, np.ones((2, 3)) / 3)


def test_age_rule_thresholds_and_drop():
    assert [AgeRule().group(a) for a in (29, 30, 59, 60)] == [0, 1, 1, 2]
    moved = AgeRule((30, 58), drop=(57, 57))
    assert [moved.group(a) for a in (57, 58, 59)] == [1, 2, 2]
    assert moved.dropped(57) and not moved.dropped(58)
    assert AgeRule.from_dict(moved.to_dict()) == moved
    with pytest.raises(ValueError):
        AgeRule((60, 30))


def test_parse_code_refuses_a_fractional_code():
    assert parse_code("gender", "1.0") == 1  # a code column pandas wrote as floats
    for text in ("1.5", "0.2", "2.9"):
        with pytest.raises(ValueError, match="not one of"):
            parse_code("gender", text)


def test_parse_code_accepts_names_and_codes():
    assert parse_code("gender", "Female") == 1
    assert parse_code("mask", "incorrect_mask") == 1
    assert parse_code("mask", "not_wear") == 2
    assert parse_code("age", "2") == 2
    with pytest.raises(ValueError, match="gender label"):
        parse_code("gender", "unknown")
    with pytest.raises(ValueError):
        parse_code("age", "3")
