"""Label-flipping data poisoners on small hand-written label arrays."""

import pytest
import torch

from attacks import AttackContext, build

CTX = AttackContext(n=10, f=2, num_classes=5)
Y = torch.tensor([0, 1, 2, 3, 4, 1])
X = torch.arange(12.0).reshape(6, 2)


def test_label_shift_by_one() -> None:
    x, y = build("label_shift").poison(X, Y, CTX)
    assert torch.equal(y, torch.tensor([1, 2, 3, 4, 0, 2]))
    assert x is X and torch.equal(Y, torch.tensor([0, 1, 2, 3, 4, 1]))  # input untouched


def test_label_shift_by_two() -> None:
    _, y = build("label_shift", {"shift": 2}).poison(X, Y, CTX)
    assert torch.equal(y, torch.tensor([2, 3, 4, 0, 1, 3]))


def test_label_swap() -> None:
    _, y = build("label_swap", {"a": 1, "b": 3}).poison(X, Y, CTX)
    assert torch.equal(y, torch.tensor([0, 3, 2, 1, 4, 3]))


def test_targeted_label_flip() -> None:
    _, y = build("targeted_label_flip", {"source": 1, "target": 4}).poison(X, Y, CTX)
    assert torch.equal(y, torch.tensor([0, 4, 2, 3, 4, 4]))
    assert y.dtype == torch.int64


def test_empty_labels() -> None:
    _, y = build("label_shift").poison(X[:0], Y[:0], CTX)
    assert y.numel() == 0


@pytest.mark.parametrize("name", ["label_shift", "label_swap", "targeted_label_flip"])
def test_needs_num_classes(name: str) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build(name).poison(X, Y, AttackContext(n=10, f=2))


@pytest.mark.parametrize("name", ["label_shift", "label_swap", "targeted_label_flip"])
def test_labels_out_of_range(name: str) -> None:
    with pytest.raises(ValueError, match="labels"):
        build(name).poison(X, torch.tensor([0, 5]), CTX)
    with pytest.raises(ValueError, match="integer"):
        build(name).poison(X, torch.tensor([0.0, 1.0]), CTX)


def test_class_parameter_beyond_num_classes() -> None:
    with pytest.raises(ValueError, match="b must be < num_classes"):
        build("label_swap", {"a": 0, "b": 7}).poison(X, Y, CTX)
    with pytest.raises(ValueError, match="target must be < num_classes"):
        build("targeted_label_flip", {"source": 0, "target": 5}).poison(X, Y, CTX)
