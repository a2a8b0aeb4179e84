"""ExplainSession: one onnxruntime session over an explanation graph (the only onnxruntime import)."""

from __future__ import annotations

import logging
import os
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from gradtap.runtime import contract as c
from gradtap.runtime.errors import ModelError, NonFiniteError, OptionError
from gradtap.runtime.info import ModelInfo, parse_info
from gradtap.runtime.modelfile import (
    check_external_data,
    check_model_file,
    runtime_log_level,
    runtime_message,
)

if TYPE_CHECKING:  # onnx costs ~1.5 s to import; only methods that read weights load it
    import onnx

logger = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]
ModelSource: TypeAlias = "str | os.PathLike[str] | onnx.ModelProto | bytes"

DEFAULT_BATCH_SIZE = 16
_GPU_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class Pass:
    """What one fused forward+backward call returned.

    Attributes:
        logits: [N, classes].
        grad_input: d sum(seed * logits) / d input, [N, 3, H, W]; ``None`` when not fetched.
        taps: tap alias -> feature map [N, C, h, w], for the taps fetched.
        tap_grads: tap alias -> d sum(seed * logits) / d tap, for the tap gradients fetched.
        constants: output name -> value, for the constant outputs asked for (``cam/<alias>``).
        outputs: output name -> value, for the other per-row outputs asked for
            (``bias_grad/<k>``).
    """

    logits: Array
    grad_input: Array | None = None
    taps: Mapping[str, Array] = field(default_factory=dict)
    tap_grads: Mapping[str, Array] = field(default_factory=dict)
    constants: Mapping[str, Array] = field(default_factory=dict)
    outputs: Mapping[str, Array] = field(default_factory=dict)


def default_providers() -> list[str]:
    """CUDA then CPU when onnxruntime-gpu sees a GPU, otherwise CPU only."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and ort.get_device() == "GPU":
        return list(_GPU_PROVIDERS)
    return ["CPUExecutionProvider"]


class ExplainSession:
    """An augmented gradtap model loaded in onnxruntime.

    Args:
        model: path to a ``.gradtap.onnx`` file, a loaded ``onnx.ModelProto`` or its bytes.
        providers: onnxruntime execution providers, in priority order; default
            :func:`default_providers`.
        threads: intra-op threads (onnxruntime's default when ``None``).
        batch_size: the largest batch sent to onnxruntime in one call; bigger batches are split
            so memory stays bounded.
        lean: trade a few percent of speed for memory (default): no per-shape memory patterns
            (calls vary in batch size and compute level, and each pattern keeps its own peak)
            and no pre-packed copies of the weights (a second copy of every large MatMul/Gemm
            weight). ``False`` keeps onnxruntime's defaults.

    Raises:
        ModelError: the file cannot be loaded or is not an augmented gradtap model.
        OptionError: an unknown provider, or a non-positive thread count or batch size.
    """

    def __init__(
        self,
        model: ModelSource,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        lean: bool = True,
    ) -> None:
        if batch_size < 1:
            raise OptionError(f"batch_size must be >= 1, got {batch_size}")
        self._source = model
        self._checked: weakref.ref[Array] | None = None  # the last batch check_input passed
        self._proto: onnx.ModelProto | None = model if _is_proto(model) else None
        self._open_args = (_providers(providers), threads, lean)
        self._session = _open(model, self._open_args[0], _options(threads, lean=lean))
        self._forward: ort.InferenceSession | None | bool = None  # see forward(); False: none
        self.provider: str = self._session.get_providers()[0]
        inputs = {i.name: list(i.shape) for i in self._session.get_inputs()}
        inputs.update({i.name: list(i.shape) for i in self._session.get_overridable_initializers()})
        self._feeds = frozenset(inputs)  # an optional input a graph lacks is not fed
        scale = inputs.get(c.TAP_SCALE, [0, 0])
        self.tap_channels: int = scale[1] if len(scale) == 2 and isinstance(scale[1], int) else 0
        """Channels C of the default tap's ``tap_scale`` input [N, C]; 0 when it has none."""
        outputs = {o.name: list(o.shape) for o in self._session.get_outputs()}
        self._outputs = frozenset(outputs)
        numbered = [o for o in outputs if o[len(c.BIAS_GRAD_PREFIX) :].isdigit()]
        self.bias_outputs: tuple[str, ...] = tuple(
            sorted(
                (o for o in numbered if o.startswith(c.BIAS_GRAD_PREFIX)),
                key=lambda o: int(o[len(c.BIAS_GRAD_PREFIX) :]),
            )
        )
        """FullGrad's ``bias_grad/<k>`` outputs in layer order; empty when the graph has none."""
        self._constants: dict[str, Array] = {}
        meta = self._session.get_modelmeta().custom_metadata_map
        self.info: ModelInfo = parse_info(
            meta, inputs=inputs, outputs=outputs, fallback_name=_stem(model)
        )
        fixed = inputs[c.INPUT][0]
        self.batch_size = fixed if isinstance(fixed, int) and fixed > 0 else batch_size
        logger.info("model %s runs on %s", self.info.name, self.provider)

    def run(
        self,
        x: Array,
        seed: Array | None = None,
        *,
        relu_rule: str = "plain",
        grad_input: bool = True,
        taps: Sequence[str] = (),
        tap_grads: bool = True,
        top1: bool = False,
        objective: str = "logits",
        constants: Sequence[str] = (),
        tap_scale: Array | None = None,
        outputs: Sequence[str] = (),
    ) -> Pass:
        """One fused call: logits, and the gradients of ``sum(seed * logits)`` asked for.

        Only what is asked for is computed (the graph's ``compute`` input): without
        ``grad_input`` the backward pass stops at the taps, and without gradients at all only
        the forward pass runs.

        Args:
            x: images [N, 3, H, W] float32 (RGB pixels in [0, 1]; normalisation is in-graph).
            seed: cotangent on the logits [N, classes]; zeros when ``None``.
            relu_rule: ``"plain"``, ``"guided"``, ``"deconvnet"`` or an LRP composite
                (``contract.LRP_RULES``; ``grad_input`` and tap gradients are then relevances).
            grad_input: fetch ``grad/input``.
            taps: aliases of the taps whose feature maps to fetch.
            tap_grads: also fetch the gradient with respect to each tap in ``taps``.
            top1: add each row's predicted class to the seed inside the graph (``seed_top1``),
                so the predicted class is explained by this one call.
            objective: ``"logits"`` differentiates ``sum(seed * logits)``; ``"cross_entropy"``
                differentiates ``-sum(seed * log_softmax(logits))`` (a one-hot seed: the loss
                gradient that adversarial images follow).
            constants: outputs that depend on the weights alone (``cam/<alias>``): fetched with
                the first chunk of the first call that asks, then kept by the session.
            tap_scale: [N, C] channel scales of the default tap's activation (``tap_scale``
                input); ones when ``None``.
            outputs: more per-row outputs to fetch (``bias_grad/<k>``); they are computed with
                the input gradient, so asking for them runs the whole backward pass.

        Returns:
            The :class:`Pass`; arrays not asked for are ``None`` / absent.

        Raises:
            OptionError: bad shapes, dtypes or relu rule. ModelError: an unknown tap.
            NonFiniteError: the model produced NaN or Inf.
        """
        x = self.check_input(x)
        seed = self._check_seed(seed, len(x))
        aliases = [self.info.tap(t) for t in taps]
        names = [c.LOGITS] + ([c.GRAD_INPUT] if grad_input else [])
        names += [c.tap_output(t) for t in aliases]
        names += [c.tap_grad_output(t) for t in aliases] if tap_grads else []
        if objective not in c.OBJECTIVES:
            raise OptionError(f"objective {objective!r} unknown; valid: {list(c.OBJECTIVES)}")
        if unknown := [n for n in outputs if n not in self._outputs]:
            raise ModelError(f"model {self.info.name!r} has no output {unknown[0]!r}")
        names += [n for n in outputs if n not in names]
        full = grad_input or bool(outputs)
        level = "full" if full else ("taps" if aliases and tap_grads else "forward")
        extra: dict[str, npt.NDArray[Any]] = {
            c.RELU_RULE: np.array(self._rule(relu_rule), dtype=np.int64),
            c.SEED_TOP1: np.array(1.0 if top1 else 0.0, np.float32),
            c.OBJECTIVE: np.array(c.OBJECTIVES[objective], np.int64),
            c.COMPUTE: np.array(c.COMPUTE_LEVELS[level], np.int64),
        }
        extra = {k: v for k, v in extra.items() if k in self._feeds}
        fetch = [n for n in dict.fromkeys(constants) if n not in self._constants]
        if unknown := [n for n in fetch if n not in self._outputs]:
            raise ModelError(f"model {self.info.name!r} has no output {unknown[0]!r}")
        rows = {c.INPUT: x, c.SEED: seed}
        if c.TAP_SCALE in self._feeds or tap_scale is not None:
            rows[c.TAP_SCALE] = self._check_tap_scale(tap_scale, len(x))
        out = dict(zip(names, self._run_chunked(names, rows, extra, fetch), strict=True))
        _check_finite(out)
        return Pass(
            logits=out[c.LOGITS],
            grad_input=out.get(c.GRAD_INPUT),
            taps=MappingProxyType({a: out[c.tap_output(a)] for a in aliases}),
            constants=MappingProxyType({n: self._constants[n] for n in constants}),
            outputs=MappingProxyType({n: out[n] for n in outputs}),
            tap_grads=MappingProxyType(
                {a: out[c.tap_grad_output(a)] for a in aliases} if tap_grads else {}
            ),
        )

    def intervene(self, image: Array, tap_scale: Array) -> Array:
        """Logits [M, classes] of one image [1, 3, H, W] under M channel scalings [M, C] of the
        default tap: forward only, the layers up to the tap computed once per chunk of rows
        (``tap_scale`` rows broadcast against a batch of one image)."""
        x = self.check_input(image)
        if len(x) != 1:
            raise OptionError(f"intervene takes one image, got {len(x)}")
        scale = self._check_tap_scale(tap_scale, len(tap_scale))
        extra = {
            name: np.asarray(default, dtype)
            for name, (dtype, default) in c.CONTROL_DEFAULTS.items()
        }
        extra[c.COMPUTE] = np.asarray(c.COMPUTE_LEVELS["forward"], np.int64)
        extra = {k: v for k, v in extra.items() if k in self._feeds}
        seed = np.zeros((1, self.info.num_classes), np.float32)
        parts = [
            self._session.run(
                [c.LOGITS],
                {c.INPUT: x, c.SEED: seed, c.TAP_SCALE: scale[i : i + self.batch_size], **extra},
            )[0]
            for i in range(0, len(scale), self.batch_size)
        ]
        out = np.concatenate(parts)
        _check_finite({c.LOGITS: out})
        return out

    def logits(self, x: Array) -> Array:
        """Forward pass only: logits [N, classes] (the backward pass is not executed)."""
        return self.run(x, None, grad_input=False).logits

    def forward(self, x: Array) -> Array:
        """Logits [N, classes], like :meth:`logits`, from a forward-only copy of the graph built
        on first use: for methods that make many forward passes (Score-CAM, occlusion, RISE,
        deletion curves).

        The copy keeps only the nodes the logits need, and max-pools lose the argmax output the
        backward pass reads: onnxruntime then fuses and re-lays out layers that the explanation
        graph's readers of activations keep apart (a pass of ResNet18 about 10 % faster). It
        holds the weights a second time, and its logits may differ from :meth:`logits` by float
        rounding (another summation order). Falls back to :meth:`logits` for a graph whose
        logits need control flow.
        """
        x = self.check_input(x)
        if self._forward is None:
            self._forward = self._forward_only() or False
        if self._forward is False:
            return self.logits(x)
        assert isinstance(self._forward, ort.InferenceSession)
        feeds = {i.name for i in self._forward.get_inputs()}
        parts = []
        for i in range(0, len(x), self.batch_size):
            rows = {c.INPUT: x[i : i + self.batch_size]}
            if c.TAP_SCALE in feeds:
                rows[c.TAP_SCALE] = np.ones((len(rows[c.INPUT]), self.tap_channels), np.float32)
            parts.append(self._forward.run([c.LOGITS], rows)[0])
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        _check_finite({c.LOGITS: out})
        return out

    def _forward_only(self) -> ort.InferenceSession | None:
        loaded = self._proto is not None
        model = self.model_proto()
        try:
            pruned = _forward_graph(model)
            data = None if pruned is None else pruned.SerializeToString()
        except (ValueError, KeyError) as err:  # an unusual graph, or over protobuf's 2 GiB
            logger.info("no forward-only copy of %s: %s", self.info.name, err)
            data = None
        finally:
            if not loaded:  # read for this copy only: not kept beside the two sessions
                self._proto = None
        if data is None:
            return None
        providers, threads, lean = self._open_args
        return _open(data, providers, _options(threads, lean=lean))

    def model_proto(self) -> onnx.ModelProto:
        """The ONNX graph itself (loaded on first use), for methods that read weights from it."""
        if self._proto is None:
            import onnx

            src = self._source
            proto = onnx.load_from_string(src) if isinstance(src, bytes) else onnx.load(src)
            self._proto = proto
        return self._proto

    def check_input(self, x: Any) -> Array:
        """Validate an input batch: float32 [N, 3, H, W] at the model's input size, finite.

        The array returned is remembered, so handing it (or a batch :meth:`trust` was told
        about) to :meth:`run` is not checked a second time.
        """
        if self._checked is not None and self._checked() is x:
            return self._checked()  # type: ignore[return-value]  # x itself: alive, checked
        return self.trust(self._validate(x))

    def trust(self, x: Array) -> Array:
        """Mark ``x`` as validated (rows picked from a checked batch); returns ``x``."""
        self._checked = weakref.ref(x)
        return x

    def _validate(self, x: Any) -> Array:
        arr = np.asarray(x)
        h, w = self.info.input_size
        if arr.ndim != 4 or arr.shape[1:] != (3, h, w) or len(arr) == 0:
            raise OptionError(f"input must be [N, 3, {h}, {w}] with N >= 1, got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise OptionError(f"input must be float pixels in [0, 1], got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise OptionError("input contains NaN or Inf")
        return arr

    def _check_seed(self, seed: Any, n: int) -> Array:
        shape = (n, self.info.num_classes)
        if seed is None:
            return np.zeros(shape, np.float32)
        arr = np.ascontiguousarray(seed, dtype=np.float32)
        if arr.shape != shape:
            raise OptionError(f"seed must be [N, classes] = {list(shape)}, got {list(arr.shape)}")
        return arr

    def _check_tap_scale(self, scale: Any, n: int) -> Array:
        if c.TAP_SCALE not in self._feeds:
            raise ModelError(f"model {self.info.name!r} has no {c.TAP_SCALE} input (contract 4)")
        shape = (n, self.tap_channels)
        if scale is None:
            return np.ones(shape, np.float32)
        arr = np.ascontiguousarray(scale, dtype=np.float32)
        if arr.shape != shape:
            raise OptionError(f"tap_scale must be [N, C] = {list(shape)}, got {list(arr.shape)}")
        return arr

    def _rule(self, relu_rule: str) -> int:
        if relu_rule not in self.info.relu_rules:
            raise OptionError(
                f"relu_rule {relu_rule!r} not available in model {self.info.name!r}; "
                f"valid: {list(self.info.relu_rules)}"
            )
        return c.BACKWARD_RULES[relu_rule]

    def _run_chunked(
        self,
        names: list[str],
        rows: dict[str, Array],
        extra: dict[str, npt.NDArray[Any]],
        constants: Sequence[str] = (),
    ) -> list[Array]:
        parts: list[list[Array]] = []
        for i in range(0, len(rows[c.INPUT]), self.batch_size):
            feeds = {k: v[i : i + self.batch_size] for k, v in rows.items()}
            fetched = self._session.run([*names, *constants], {**feeds, **extra})
            if constants:  # the first chunk brings them; they do not depend on the rows
                self._constants.update(zip(constants, fetched[len(names) :], strict=True))
                constants = ()
            parts.append(fetched[: len(names)])
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(arrays) for arrays in zip(*parts, strict=True)]


def _providers(requested: Sequence[str] | None) -> list[str]:
    if requested is None:
        return default_providers()
    available = ort.get_available_providers()
    unknown = [p for p in requested if p not in available]
    if unknown or not requested:
        raise OptionError(
            f"providers {list(unknown or requested)} not available; valid: {available}"
        )
    return list(requested)


def _options(threads: int | None, *, lean: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if lean:
        opts.enable_mem_pattern = False
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if threads is not None:
        if threads < 1:
            raise OptionError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = runtime_log_level()
    ort.set_default_logger_severity(runtime_log_level())
    return opts


def _open(
    model: ModelSource, providers: list[str], opts: ort.SessionOptions
) -> ort.InferenceSession:
    if _is_proto(model):
        model = model.SerializeToString()
    if isinstance(model, bytes):
        check_external_data(model)
    else:
        path = Path(model)
        check_model_file(path)  # folders, pipes, devices, empty and over-2-GiB files
        check_external_data(path)  # before onnxruntime reads any of it
        model = str(path)
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for bad files
        what = model if isinstance(model, str) else "<in-memory model>"
        raise ModelError(f"cannot load {what!r} as an ONNX model: {runtime_message(err)}") from err


def _forward_graph(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The graph cut to the nodes the logits need (None where one of them has a subgraph);
    max-pools whose argmax nothing kept reads compute the maximum only."""
    import onnx
    from onnx import helper

    graph = model.graph
    wanted, kept = {c.LOGITS}, []
    for node in reversed(graph.node):
        if not wanted.intersection(node.output):
            continue
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            return None
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        if (
            copy.op_type == "MaxPool"
            and len(copy.output) > 1
            and not wanted.intersection(copy.output[1:])
        ):
            del copy.output[1:]
        kept.append(copy)
        wanted.update(x for x in copy.input if x)
    out = helper.make_graph(
        kept[::-1], f"{graph.name}/forward", [i for i in graph.input if i.name in wanted],
        [o for o in graph.output if o.name == c.LOGITS],
        [t for t in graph.initializer if t.name in wanted],
    )  # fmt: skip
    return helper.make_model(out, opset_imports=model.opset_import, ir_version=model.ir_version)


def _is_proto(model: object) -> TypeGuard[onnx.ModelProto]:
    """Whether ``model`` is an ``onnx.ModelProto``, without importing onnx when it cannot be."""
    onnx = sys.modules.get("onnx")
    return onnx is not None and isinstance(model, onnx.ModelProto)


def _stem(model: ModelSource) -> str:
    if _is_proto(model) or isinstance(model, bytes):
        return "<in-memory model>"
    return Path(model).name.split(".")[0]


def _check_finite(out: Mapping[str, Array]) -> None:
    bad = [name for name, arr in out.items() if not np.isfinite(arr).all()]
    if bad:
        raise NonFiniteError(f"the model produced NaN or Inf in {bad}")
