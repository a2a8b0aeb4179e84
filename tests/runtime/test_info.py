"""parse_info: metadata and graph shapes to ModelInfo, with an error naming each defect."""

from __future__ import annotations

import json

import pytest

from gradtap.runtime import contract as c
from gradtap.runtime.errors import ModelError
from gradtap.runtime.info import parse_info

INPUTS = {c.INPUT: ["batch", 3, 32, 32], c.SEED: ["batch", 2], c.RELU_RULE: []}
OUTPUTS = {
    c.LOGITS: ["batch", 2],
    c.GRAD_INPUT: ["batch", 3, 32, 32],
    "tap/layer4": ["batch", 8, 4, 4],
    "grad/tap/layer4": ["batch", 8, 4, 4],
}


def meta(**extra: object) -> dict[str, str]:
    base = {c.META_AUGMENTED: "1", c.META_CONTRACT: c.CONTRACT_VERSION}
    base.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return base


def parse(m: dict[str, str], inputs: dict = INPUTS, outputs: dict = OUTPUTS):  # noqa: ANN201
    return parse_info(m, inputs=inputs, outputs=outputs, fallback_name="file")


def test_defaults_from_the_graph() -> None:
    info = parse(meta())
    assert info.name == "file" and info.labels == ("class_0", "class_1")
    assert info.input_size == (32, 32) and info.resize_policy == "stretch"
    assert info.taps == ("layer4",) and info.default_tap is None and info.tap(None) == "layer4"
    assert info.relu_rules == ("plain", "guided", "deconvnet") and info.mean is None


def test_full_metadata() -> None:
    info = parse(
        meta(
            **{
                c.META_NAME: "resnet18",
                c.META_LABELS: ["cat", "dog"],
                c.META_INPUT_SIZE: [32, 32],
                c.META_RESIZE: {"policy": "shorter_side_center_crop", "size": 36},
                c.META_NORMALIZATION: {"mean": [0.5] * 3, "std": [0.25] * 3, "in_graph": True},
                c.META_DEFAULT_TAP: "layer4",
                c.META_WEIGHTS: "random",
            }
        )
    )
    assert info.name == "resnet18" and info.labels == ("cat", "dog") and info.resize_size == 36
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.25,) * 3 and info.weights == "random"
    assert info.metadata[c.META_NAME] == "resnet18"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {c.META_LABELS: ["a", "b", "c"]},
            "gradtap.labels has 3 names, but the logits have 2 classes",
        ),
        ({c.META_LABELS: "not json"}, "is not valid JSON"),
        ({c.META_LABELS: [1, 2]}, "must be a JSON list of strings"),
        ({c.META_RESIZE: {"policy": "crop"}}, r"gradtap.resize policy \"crop\" unknown; valid: \["),
        (
            {c.META_RESIZE: {"policy": "shorter_side_center_crop", "size": 16}},
            "gradtap.resize size 16 must be an int from the input size 32 to 16384",
        ),
        ({c.META_RESIZE: {"policy": "shorter_side_center_crop", "size": 10**9}}, "to 16384"),
        ({c.META_INPUT_SIZE: [100000, 100000]}, "sides in 1..16384, got \\[100000, 100000\\]"),
        ({c.META_INPUT_SIZE: [True, 3]}, "gradtap.input_size must be"),
        ({c.META_INPUT_SIZE: [24, 24]}, r"is \[24, 24\], but the graph's input 'input' is 32x32"),
        ({c.META_LABELS: []}, "gradtap.labels is an empty list"),
        ({c.META_NORMALIZATION: [0.5]}, "gradtap.normalization must be a JSON object"),
        ({c.META_NORMALIZATION: {"mean": "0.5"}}, "'mean' must be 3 finite numbers, got"),
        ({c.META_NORMALIZATION: {"std": [1, 0, 1]}}, "'std' must be 3 finite numbers > 0"),
        ({c.META_NORMALIZATION: {"mean": [1, 2]}}, "'mean' must be 3 finite numbers"),
        (
            {c.META_INPUT_SIZE: [32]},
            r"gradtap.input_size must be \[H, W\] with sides in 1..16384, got \[32\]",
        ),
        ({c.META_DEFAULT_TAP: "conv5_3"}, r"default tap 'conv5_3' is not among taps \('layer4',\)"),
        ({c.META_CONTRACT: "0"}, "contract version '0'"),
        ({c.META_AUGMENTED: "0"}, "not an augmented gradtap model .*gradtap augment"),
    ],
)
def test_metadata_errors(extra: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse(meta(**extra))


def test_graph_errors() -> None:
    with pytest.raises(ModelError, match=r"missing \['grad/input'\]"):
        parse(meta(), outputs={k: v for k, v in OUTPUTS.items() if k != c.GRAD_INPUT})
    with pytest.raises(ModelError, match=r"taps \['layer4'\] have no grad/tap/ output"):
        parse(meta(), outputs={k: v for k, v in OUTPUTS.items() if k != "grad/tap/layer4"})
    with pytest.raises(ModelError, match=r"must be \[N, 3, H, W\]"):
        parse(meta(), inputs={**INPUTS, c.INPUT: ["batch", 1, 32, 32]})
    no_rule = {k: v for k, v in INPUTS.items() if k != c.RELU_RULE}
    assert parse(meta(), inputs=no_rule).relu_rules == ("plain",)
