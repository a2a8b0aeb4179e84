"""The pass version follows what the pass emits: a golden digest of a canonical augmented CNN."""

from __future__ import annotations

from gradtap.export.graph.augment import augment
from gradtap.export.graph.version import PASS_VERSION, graph_digest
from tests.graphs import tiny_cnn

# PASS_VERSION -> digest of augment(tiny_cnn()). When the pass emits something else, bump
# PASS_VERSION, record the new digest here and regenerate the shipped graph (`make models`).
GOLDEN = {
    "4.3": "98ee48ced92587c2",
    "4.4": "8662d7a860292d5e",  # 4.4: tap_scale only on request
    "4.5": "70db055bfa9d4d12",  # 4.5: the LRP walk (relu_rule codes 3-11)
    "4.6": "58bdf39fffb582b3",  # 4.6: LRP codes 12-13 (gamma, epsilon_gamma_box)
    "4.7": "8662d7a860292d5e",  # 4.7: the LRP walk only on request; the default graph is 4.4's
    "4.8": "8662d7a860292d5e",  # 4.8: the LRP walk behind If nodes; the default graph is 4.4's
    "4.9": "8662d7a860292d5e",  # 4.9: strided ConvTranspose with equal channel counts widened
    "4.10": "8662d7a860292d5e",  # 4.10: square products widened; LRP chains; ReduceMean scale
    "4.11": "8662d7a860292d5e",  # 4.11: QuantizeLinear/DequantizeLinear rules (QDQ graphs)
}


def test_the_canonical_graph_matches_the_digest_recorded_for_this_version() -> None:
    digest = graph_digest(augment(tiny_cnn()))
    assert GOLDEN.get(PASS_VERSION) == digest, (
        f"the pass now emits graph {digest}: bump PASS_VERSION in export/graph/version.py, "
        "record the digest in GOLDEN and run `make models`"
    )


def test_the_digest_ignores_metadata_but_sees_the_graph() -> None:
    model = augment(tiny_cnn())
    before = graph_digest(model)
    model.metadata_props.add(key="note", value="x")
    assert graph_digest(model) == before
    model.graph.node[0].name += "_renamed"
    assert graph_digest(model) != before
