"""Targets: resolution of indices, names, top-k and lists; one-hot, softmax and the CE seed."""

from __future__ import annotations

import numpy as np
import pytest

from gradtap.runtime.errors import TargetError
from gradtap.runtime.targets import (
    Each,
    _synonym_table,
    ce_seed,
    class_index,
    needs_logits,
    onehot,
    resolve,
    softmax,
    synonyms,
)

LABELS = ("tabby cat", "Dog", "dog house", "crane", "crane", "7")
LOGITS = np.array([[0.1, 3.0, 2.0, -1.0, 0.0, 0.5], [5.0, 1.0, 0.2, 0.3, 0.4, 0.0]], np.float32)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (1, 1),
        ("Dog", 1),
        ("dog", 1),  # unique case-insensitive match
        ("  dog house ", 2),
        ("2", 2),  # a digit string that is not a label is an index
        ("7", 5),  # an exact label wins over the index reading
        (np.int64(3), 3),
    ],
)
def test_class_index(spec: object, expected: int) -> None:
    assert class_index(spec, LABELS) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (6, r"target class 6 out of range \[0, 5\]"),
        (-1, "out of range"),
        ("crane", r"ambiguous: 3 \(crane\), 4 \(crane\); give the index"),
        ("tabby", r"unknown class name 'tabby'; closest: 'tabby cat' \(0\)"),
        ("zebra", "unknown class name 'zebra'; give an index or a class name"),
        (True, "must be an int index or a class name"),
        (1.5, "must be an int index or a class name"),
    ],
)
def test_class_index_errors(spec: object, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        class_index(spec, LABELS)  # type: ignore[arg-type]


def test_resolve_none_is_argmax_per_image() -> None:
    rows = resolve(None, LABELS, 2, LOGITS)
    assert rows.image_index.tolist() == [0, 1]
    assert rows.target.tolist() == [1, 0]


def test_resolve_top_k_orders_by_logit() -> None:
    rows = resolve("top-3", LABELS, 2, LOGITS)
    assert rows.image_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert rows.target.tolist() == [1, 2, 5, 0, 1, 4]


def test_resolve_list_explains_each_image_for_every_entry() -> None:
    """The correct label next to wrong ones, for every image, in one batch."""
    rows = resolve(Each([None, "dog house", 0]), LABELS, 2, LOGITS)
    assert rows.image_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert rows.target.tolist() == [1, 2, 0, 0, 2, 0]


@pytest.mark.parametrize("spec", [[2, 0], (2, 0), np.array([2, 0]), [np.int64(2), "tabby cat"]])
def test_resolve_list_is_one_target_per_image(spec) -> None:  # noqa: ANN001
    """captum / pytorch-grad-cam meaning: entry i is image i's target."""
    rows = resolve(spec, LABELS, 2, LOGITS)
    assert rows.image_index.tolist() == [0, 1] and rows.target.tolist() == [2, 0]


def test_resolve_per_image_entries_may_be_predictions_or_top_k() -> None:
    rows = resolve([None, "top-2"], LABELS, 2, LOGITS)
    assert rows.image_index.tolist() == [0, 1, 1] and rows.target.tolist() == [1, 0, 1]


@pytest.mark.parametrize("spec", [[1, 2, 3], [1], np.array([1, 2, 3])])
def test_resolve_per_image_list_of_the_wrong_length_names_targets_each(spec) -> None:  # noqa: ANN001
    with pytest.raises(TargetError, match=r"one target per image.*targets_each"):
        resolve(spec, LABELS, 2, LOGITS)


def test_resolve_refuses_a_2d_array_and_floats() -> None:
    with pytest.raises(TargetError, match="1-D"):
        resolve(np.zeros((2, 2), np.int64), LABELS, 2, LOGITS)
    with pytest.raises(TargetError, match="int index"):
        resolve([1.5, 2], LABELS, 2, LOGITS)


def test_resolve_explicit_targets_need_no_logits() -> None:
    assert not needs_logits([1, "Dog"]) and needs_logits(["Dog", None]) and needs_logits("top-2")
    rows = resolve(Each(["Dog"]), LABELS, 3)
    assert rows.target.tolist() == [1, 1, 1] and rows.image_index.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "empty target list"),
        (None, "needs logits"),
        ("top-0", "1 <= k <= 6"),
        ("top-7", "1 <= k <= 6"),
    ],
)
def test_resolve_errors(spec: object, message: str) -> None:
    logits = None if spec is None else LOGITS
    with pytest.raises(TargetError, match=message):
        resolve(spec, LABELS, 2, logits)  # type: ignore[arg-type]


def test_onehot_and_errors() -> None:
    np.testing.assert_array_equal(onehot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(TargetError, match=r"in \[0, 2\]"):
        onehot([3], 3)


def test_softmax_matches_hand_values_and_is_stable() -> None:
    p = softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]], np.float32))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)


def test_ce_seed_is_the_gradient_of_cross_entropy() -> None:
    """softmax - onehot against central finite differences of -log softmax[label]."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 5))
    labels = np.array([4, 0, 2])

    def loss(zz: np.ndarray) -> np.ndarray:
        zz = zz - zz.max(axis=1, keepdims=True)
        return -(zz[np.arange(3), labels] - np.log(np.exp(zz).sum(axis=1)))

    eps = 1e-6
    numeric = np.zeros_like(z)
    for j in range(5):
        d = np.zeros_like(z)
        d[:, j] = eps
        numeric[:, j] = (loss(z + d) - loss(z - d)) / (2 * eps)
    np.testing.assert_allclose(ce_seed(z.astype(np.float32), labels), numeric, atol=1e-5)


IMAGENET = tuple(names[0] for names in _synonym_table())  # the labels gradtap export writes


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("tiger cat", 282),  # torchvision's name; gradtap's label is the curated one
        ("Tiger Cat", 282),
        ("tabby", 281),  # a WordNet synonym
        ("espresso", 967),
        ("Carassius auratus", 1),  # the scientific synonym of goldfish
        ("a cat having a striped coat", 282),
    ],
)
def test_imagenet_names_match_any_synonym(name: str, index: int) -> None:
    assert class_index(name, IMAGENET) == index


def test_imagenet_ambiguous_and_unknown_names_list_real_ones() -> None:
    with pytest.raises(
        TargetError, match=r"'crane' is ambiguous: 134 \(crane bird\), 517 \(construction crane\)"
    ):
        class_index("crane", IMAGENET)
    with pytest.raises(TargetError, match=r"closest: 'espresso' \(967\)"):
        class_index("expresso", IMAGENET)
    with pytest.raises(TargetError, match=r"'tabby cat' \(281\)"):
        class_index("taby cat", IMAGENET)


def test_synonyms_apply_only_to_imagenet_labels() -> None:
    assert synonyms(LABELS) is None
    assert synonyms(tuple(f"class_{i}" for i in range(1000))) is None
    assert synonyms(IMAGENET)[282][:2] == ("a cat having a striped coat", "tiger cat")
