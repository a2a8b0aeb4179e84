"""The augmented-graph contract: names, metadata keys and the version, shared by export and runtime.

An augmented ("explanation") graph has these inputs and outputs:

inputs
  ``input``       float32 [N, 3, H, W], RGB pixels in [0, 1]; normalisation happens inside the graph.
  ``seed``        float32 [N, classes], the cotangent on the logits: the graph differentiates
                  ``sum(seed * logits)``.
  ``relu_rule``   int64 scalar (0 for plain gradients): how rectifiers (Relu, and Clip with
                  min 0 such as ReLU6) pass gradients back: 0 plain gradient, 1 guided backprop,
                  2 deconvnet. Codes 3 and up (contract 5, ``LRP_RULES``) switch the whole
                  backward pass to layer-wise relevance propagation: ``grad/input`` and
                  ``grad/tap/<alias>`` are then relevances, see ``gradtap.export.graph.lrp``.
  ``seed_top1``   float32 scalar (0 for none): added to the seed on each row's
                  top-1 class, so ``seed = 0, seed_top1 = 1`` explains the predicted class in
                  one call, without a forward pass first to find it.
  ``objective``   int64 scalar (0 for the logits): what the seed weighs. 0: the graph
                  differentiates ``sum(seed * logits)``; 1: the cross-entropy
                  ``-sum(seed * log_softmax(logits))``, whose gradient on the logits is
                  ``softmax(logits) * sum(seed) - seed`` (so a one-hot seed gives the loss
                  gradient that FGSM and fooling images follow, in one call).
  ``compute``     int64 scalar (2 for everything): how much of the graph runs. 0: the
                  forward pass only (logits, taps); 1: also the backward pass down to the taps
                  (tap gradients); 2: everything (also the input gradient). Outputs of a part
                  that did not run come back as empty tensors of the right rank.
  ``tap_scale``   float32 [N, C], required where present (contract 4; absent when the default
                  tap has no static channel count): multiplies the default tap's activation
                  channel by channel before the network reads it (``tap/<alias>`` stays
                  unscaled). Feed ones for the plain model; Ablation-CAM feeds a zero per row.
                  With one image and ``compute = 0`` it may have M rows: the image runs once up
                  to the tap and is broadcast over the M scalings (``logits`` [M, classes]).

Every input is required: the file carries no defaults (runtimes that hide or fold inputs with
initializers would drop them), callers feed ``CONTROL_DEFAULTS`` for the ones they do not use.
A flat graph (``gradtap augment --flat``, no If nodes) has no ``compute`` input and always
computes everything.

outputs
  ``logits``             float32 [N, classes]
  ``tap/<alias>``        the feature map of each tap, e.g. ``tap/layer4`` [N, C, h, w]
  ``grad/input``         d sum(seed * logits) / d input, [N, 3, H, W]
  ``cam/<alias>``        class weights [classes, C] of a GAP -> linear head after the tap
                         (only for such taps; they depend on the weights alone)
  ``grad/tap/<alias>``   d sum(seed * logits) / d tap, same shape as the tap
  ``bias_grad/<k>``      float32 [N, h_k, w_k], only in graphs augmented with
                         ``bias_gradients=True`` (contract 5): FullGrad's bias-gradient map of
                         the k-th biased layer (Conv with a bias, BatchNormalization; 4-D
                         output) in forward order, ``sum_c minmax_hw(|b_c * dS/dz_c|)``;
                         computed with the input gradient (``compute = 2``), empty otherwise.
                         Metadata ``gradtap.bias_gradients`` maps each output to its node
  ``probabilities``      float32 [N, classes], only when the forward graph ended in a Softmax
                         (or Sigmoid) head: augment explains the head's input as ``logits`` and
                         returns the original output here (metadata ``gradtap.head`` says which)
"""

from __future__ import annotations

CONTRACT_VERSION = "5"

INPUT = "input"
SEED = "seed"
RELU_RULE = "relu_rule"
SEED_TOP1 = "seed_top1"
OBJECTIVE = "objective"
COMPUTE = "compute"
TAP_SCALE = "tap_scale"
INPUTS = (INPUT, SEED, RELU_RULE, SEED_TOP1, OBJECTIVE, COMPUTE, TAP_SCALE)  # in graph order
LOGITS = "logits"
TAP_PREFIX = "tap/"
GRAD_PREFIX = "grad/"
CAM_PREFIX = "cam/"
GRAD_INPUT = GRAD_PREFIX + INPUT
BIAS_GRAD_PREFIX = "bias_grad/"  # FullGrad's per-layer maps, only with bias_gradients=True
PROBABILITIES = "probabilities"  # only where augment took a Softmax/Sigmoid head off the logits

RELU_RULES: dict[str, int] = {"plain": 0, "guided": 1, "deconvnet": 2}
# relu_rule codes of the LRP composites (contract 5): the rule of the first linear layer, of the
# other convolutions, and of the other dense layers (Gemm, MatMul) is in export/graph/lrp.py
LRP_RULES: dict[str, int] = {
    "lrp_epsilon": 3, "lrp_zplus": 4, "lrp_alpha2beta1": 5, "lrp_alpha1beta0": 6, "lrp_flat": 7,
    "lrp_epsilon_plus": 8, "lrp_epsilon_alpha2beta1": 9, "lrp_epsilon_plus_flat": 10,
    "lrp_epsilon_plus_box": 11, "lrp_gamma": 12, "lrp_epsilon_gamma_box": 13,
}  # fmt: skip
LRP_GAMMA = 0.25  # the gamma rule's share of the positive (negative) weights (zennit's default)
LRP_EPSILON = 1e-6  # the epsilon of the epsilon rule and every rule's stabiliser (zennit's default)
BACKWARD_RULES: dict[str, int] = {**RELU_RULES, **LRP_RULES}  # every relu_rule code, by name
OBJECTIVES: dict[str, int] = {"logits": 0, "cross_entropy": 1}
COMPUTE_LEVELS: dict[str, int] = {"forward": 0, "taps": 1, "full": 2}
# control input -> (ONNX element type name, the value that asks for a plain full pass)
CONTROL_DEFAULTS: dict[str, tuple[str, int | float]] = {
    RELU_RULE: ("int64", 0), SEED_TOP1: ("float32", 0.0), OBJECTIVE: ("int64", 0),
    COMPUTE: ("int64", 2),
}  # fmt: skip

# metadata_props keys; values are strings, JSON where structured
META_PREFIX = "gradtap."
META_CONTRACT = META_PREFIX + "contract_version"
META_NAME = META_PREFIX + "model_name"  # e.g. "resnet18"
META_SOURCE = META_PREFIX + "source"  # where the architecture came from
META_WEIGHTS = META_PREFIX + "weights"  # what weights were loaded
META_LABELS = META_PREFIX + "labels"  # JSON list of class names, index = class id
META_INPUT_SIZE = META_PREFIX + "input_size"  # JSON [H, W] the graph expects
# JSON {"policy": "shorter_side_center_crop", "size": 256, "filter": "bilinear", "crop": "center"}
META_RESIZE = META_PREFIX + "resize"
# JSON {"mean": [...], "std": [...], "in_graph": true}
META_NORMALIZATION = META_PREFIX + "normalization"
META_COLOR_ORDER = META_PREFIX + "color_order"  # "RGB"
META_VALUE_RANGE = META_PREFIX + "value_range"  # JSON [0, 1]
META_DEFAULT_TAP = META_PREFIX + "default_tap"  # alias of the default tap
META_TAPS = META_PREFIX + "taps"  # JSON {alias: tensor name in the forward graph}
META_RELU_RULES = META_PREFIX + "relu_rules"  # JSON BACKWARD_RULES (RELU_RULES in contract 4)
META_AUGMENTED = META_PREFIX + "augmented"  # "1" once the backward pass is in the graph
META_PASS_VERSION = META_PREFIX + "pass_version"  # hash of the augmentation pass that wrote it
# JSON {"op": "Softmax", "axis": -1, "output": ..., "scores": ..., "probabilities": ...}: the head
# augment removed from the explained path (absent: the graph's output was explained as it is)
META_HEAD = META_PREFIX + "head"
# JSON {"layout", "channel_order", "value_range", "mean", "std", "source"}: what the original
# graph expected, converted to in the graph from the contract's RGB [0, 1] NCHW input
META_PREPROCESSING = META_PREFIX + "preprocessing"
# JSON {"bias_grad/<k>": node name}: the biased layers behind FullGrad's outputs (contract 5)
META_BIAS_GRADIENTS = META_PREFIX + "bias_gradients"

RESIZE_POLICIES = frozenset({"shorter_side_center_crop", "stretch"})
# The resize filter the runtime applies (gradtap.runtime.image.geometry.resize): OpenCV's
# INTER_AREA when neither side grows, else INTER_LINEAR (bilinear, half-pixel centres).
RESIZE_FILTER = "area_down_bilinear_up"


def tap_output(alias: str) -> str:
    """Graph output name of a tap's feature map."""
    return TAP_PREFIX + alias


def cam_output(alias: str) -> str:
    """Graph output name of the class weights [classes, C] of a GAP -> linear head after a tap."""
    return CAM_PREFIX + alias


def tap_grad_output(alias: str) -> str:
    """Graph output name of the gradient with respect to a tap."""
    return GRAD_PREFIX + TAP_PREFIX + alias


def bias_grad_output(k: int) -> str:
    """Graph output name of FullGrad's reduced bias-gradient map of the k-th biased layer."""
    return f"{BIAS_GRAD_PREFIX}{k}"
