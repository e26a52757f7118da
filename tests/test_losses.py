import pytest
import torch
import torch.nn.functional as F

from facet.models.losses import FocalLoss, SoftF1Loss, build_loss, class_weights


@pytest.mark.parametrize("k", [2, 3, 5, 18])
def test_losses_work_for_any_class_count(k):
    torch.manual_seed(0)
    logits = torch.randn(16, k, requires_grad=True)
    target = torch.randint(0, k, (16,))
    for name in ("ce", "focal", "f1"):
        loss = build_loss(name, k, label_smoothing=0.1 if name != "f1" else 0.0)(logits, target)
        loss.backward()
        assert loss.ndim == 0 and torch.isfinite(loss) and logits.grad is not None


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(32, 3), torch.randint(0, 3, (32,))
    torch.testing.assert_close(FocalLoss(0.0)(logits, target), F.cross_entropy(logits, target))
    assert FocalLoss(2.0)(logits, target) < F.cross_entropy(logits, target)


def test_soft_f1_is_zero_for_confident_right_answers_and_high_for_wrong():
    target = torch.tensor([0, 1, 2, 1])
    right = F.one_hot(target, 3).float() * 50
    assert SoftF1Loss(3)(right, target) < 1e-3
    assert SoftF1Loss(3)(right.roll(1, dims=1), target) > 0.99


def test_class_weights():
    counts = torch.tensor([90, 9, 1])
    w = class_weights("balanced", counts)
    assert w[2] > w[1] > w[0] and torch.isclose(w.mean(), torch.tensor(1.0))
    assert class_weights("none", counts) is None
    assert class_weights("1,2,3", counts).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="2 values for 3"):
        class_weights("1,2", counts)


def test_f1_weight_adds_the_f1_term():
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    plain = build_loss("ce", 3)(logits, target)
    both = build_loss("ce", 3, f1_weight=0.5)(logits, target)
    torch.testing.assert_close(both, plain + 0.5 * SoftF1Loss(3)(logits, target))
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge", 3)


@pytest.mark.parametrize("name", ["ce", "focal", "f1"])
def test_one_hot_targets_give_the_same_loss_as_class_indices(name):
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    weight = None if name == "f1" else torch.tensor([0.5, 1.0, 2.0])
    loss = build_loss(name, 3, weight, label_smoothing=0.0 if name == "f1" else 0.1)
    torch.testing.assert_close(loss(logits, F.one_hot(target, 3).float()), loss(logits, target))
    # against a reference written for class indices only
    ce = F.cross_entropy(logits, target, weight=weight, reduction="none",
                         label_smoothing=0.0 if name == "f1" else 0.1)
    p = logits.softmax(-1)
    p_t = p.gather(1, target[:, None]).squeeze(1)
    onehot = F.one_hot(target, 3).float()
    tp, fp, fn = (p * onehot).sum(0), (p * (1 - onehot)).sum(0), ((1 - p) * onehot).sum(0)
    reference = {"ce": torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)(logits, target),
                 "focal": ((1 - p_t) ** 2 * ce).mean(),
                 "f1": 1 - (2 * tp / (2 * tp + fp + fn + 1e-7)).mean()}[name]
    torch.testing.assert_close(loss(logits, target), reference)


def test_ce_on_a_mixed_target_is_the_mix_of_the_two_losses():
    torch.manual_seed(0)
    logits, a, b = torch.randn(8, 3), torch.randint(0, 3, (8,)), torch.randint(0, 3, (8,))
    ce = build_loss("ce", 3)
    mixed = 0.7 * F.one_hot(a, 3).float() + 0.3 * F.one_hot(b, 3).float()
    torch.testing.assert_close(ce(logits, mixed), 0.7 * ce(logits, a) + 0.3 * ce(logits, b))
