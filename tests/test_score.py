import numpy as np
import pandas as pd
import pytest

from facet.metrics import macro_f1_from_confusion, scores
from facet.score import score_files


def test_unanswered_images_count_as_wrong_without_a_class_of_their_own(tmp_path):
    pd.DataFrame({"ImageID": list("abcdef"), "ans": [0, 0, 1, 1, 7, 7]}).to_csv(
        tmp_path / "answers.csv", index=False)
    # b has an empty answer (unreadable image), f no row at all
    pd.DataFrame({"ImageID": list("abcde"), "ans": ["0", "", "1", "1", "7"]}).to_csv(
        tmp_path / "pred.csv", index=False)
    result = score_files(tmp_path / "pred.csv", tmp_path / "answers.csv")
    assert result["images"] == 6 and result["unanswered"] == 2
    assert result["accuracy"] == pytest.approx(4 / 6)
    # classes 0 and 7 each lose one of two images (F1 2/3), class 1 is perfect; no 4th class
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    # mask codes: truth 0,0,0,0,1,1; answered 0,-,0,0,1,-
    assert result["attributes"]["mask"]["macro_f1"] == pytest.approx((6 / 7 + 2 / 3) / 2)
    assert result["attributes"]["mask"]["accuracy"] == pytest.approx(4 / 6)


def test_confusion_macro_f1_is_the_scores_macro_f1():
    rng = np.random.default_rng(0)
    for _ in range(50):
        k = int(rng.integers(2, 19))
        used = rng.choice(k, int(rng.integers(1, k + 1)), replace=False)  # some classes absent
        y_true, y_pred = rng.choice(used, 40), rng.choice(used, 40)
        s = scores(y_true, y_pred, k)
        assert macro_f1_from_confusion(s["confusion"]) == pytest.approx(s["macro_f1"], abs=1e-12)


@pytest.mark.parametrize("pred,answers,message", [
    ("ImageID,ans\na,0\na,1\n", "ImageID,ans\na,0\n", "'a' appears more than once"),
    ("ImageID,ans\na,x\n", "ImageID,ans\na,0\n", "ans 'x' for a is not a class"),
    ("ImageID,ans\na,0\n", "ImageID,ans\na,\n", "for a is not a class"),
    ("ImageID,ans\na,18\n", "ImageID,ans\na,0\n", "ans '18'"),
    ("", "ImageID,ans\na,0\n", "not a readable CSV"),
    ("id,label\na,0\n", "ImageID,ans\na,0\n", "needs columns ImageID and ans")])
def test_bad_submissions_and_answers_name_the_file(tmp_path, pred, answers, message):
    from facet.score import ScoreError
    (tmp_path / "pred.csv").write_text(pred)
    (tmp_path / "answers.csv").write_text(answers)
    with pytest.raises(ScoreError, match=message):
        score_files(tmp_path / "pred.csv", tmp_path / "answers.csv")


def test_scores_are_sklearns_to_the_bit():
    """One F1 in facet (``metrics._f1``): it gives what scikit-learn gives, misses included,
    bit for bit, so a training run's metrics.csv does not move with the implementation."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
    rng = np.random.default_rng(1)
    for _ in range(50):
        k = int(rng.integers(2, 19))
        used = rng.choice(k, int(rng.integers(1, k + 1)), replace=False)
        y_true = rng.choice(used, 60)
        y_pred = np.where(rng.random(60) < 0.1, -1, rng.choice(used, 60))  # some unanswered
        s = scores(y_true, y_pred, k)
        present = np.union1d(y_true, y_pred[y_pred >= 0])
        assert s["macro_f1"] == float(f1_score(y_true, y_pred, labels=present, average="macro",
                                               zero_division=0))
        assert s["per_class_f1"] == [float(x) for x in f1_score(
            y_true, y_pred, labels=list(range(k)), average=None, zero_division=0)]
        assert s["accuracy"] == float(accuracy_score(y_true, y_pred))
        assert s["confusion"] == confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist()


def test_photo_faces_take_the_detection_that_overlaps_them_and_a_miss_is_wrong():
    from facet.score import score_photo_faces
    annotated = pd.DataFrame({"path": ["a", "a", "a", "b"],
                              "box": [(0, 0, 40, 40), (100, 0, 40, 40), (42, 0, 10, 10),
                                      (0, 0, 30, 30)],
                              "mask": [0, 2, 1, 1]})
    found = {"a": [((102, 2, 40, 40), 2),  # the second face, right
                   ((41, 0, 10, 10), 0),  # the small face takes it, not the large one beside it
                   ((5, 5, 40, 40), 1)],  # the first face, wrong
             "b": [((200, 200, 30, 30), 1)]}  # nobody's: b's face is missed
    row = score_photo_faces(annotated, found, scored=[True, True, False, True])
    assert row["faces"] == 3 and row["missed"] == 1
    # truth wear, not_wear, incorrect; answered incorrect, not_wear, (missed)
    assert row["per_class_f1"] == {"wear": 0.0, "incorrect": 0.0, "not_wear": 1.0}
    assert row["macro_f1"] == pytest.approx(1 / 3, abs=1e-4)
