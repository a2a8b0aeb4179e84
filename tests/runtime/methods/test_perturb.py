"""Input x gradient, GradientShap and the noise tunnel against captum with the same random draws,
and RISE against a reference written with the torch model and the same masks.

captum draws its noise with torch and its baselines and path points with numpy's global
generator: the noise is replaced by ours (``NoiseTunnel._add_noise_to_input``), the numpy draws
are replayed from the same global seed. Noise-free gradients agree to 1e-4 of their largest
magnitude; sampled ones up to float32 ReLU decisions near zero (see ``agree``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from captum.attr import GradientShap, InputXGradient, NoiseTunnel, Saliency  # noqa: E402
from captum.attr import GuidedBackprop as CaptumGuided  # noqa: E402
from captum.attr._core.noise_tunnel import NoiseTunnel as _NT  # noqa: E402

from gradtap.export.models.to_onnx import model_path  # noqa: E402
from gradtap.export.models.zoo import build, pixel_space  # noqa: E402
from gradtap.runtime.errors import OptionError  # noqa: E402
from gradtap.runtime.methods import perturb  # noqa: E402
from gradtap.runtime.methods.base import prepare  # noqa: E402
from gradtap.runtime.session import ExplainSession  # noqa: E402
from gradtap.runtime.targets import Each, softmax  # noqa: E402
from tests.flips import assert_close_but_for_flips  # noqa: E402

TARGETS = [3, 7]
ROWS = [
    0,
    3,
]  # our rows for (image 0, target 3) and (image 1, target 7) out of target=Each(TARGETS)
SAMPLES = 6


@dataclass(frozen=True)
class Pair:
    session: ExplainSession
    net: torch.nn.Module
    x: np.ndarray


@pytest.fixture(scope="module")
def pair() -> Pair:
    model, spec = build("smallcnn", "random")
    net = pixel_space(model, spec).eval()
    for module in net.modules():  # captum's ReLU hooks need out-of-place rectifiers
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    session = ExplainSession(model_path("smallcnn", "random", augmented=True))
    h, w = session.info.input_size
    x = np.random.default_rng(0).random((2, 3, h, w), dtype=np.float32)
    return Pair(session, net, x)


def rel_max(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def agree(ours: np.ndarray, ref: np.ndarray) -> bool:
    """Equal up to float32 ReLU decisions near zero.

    A noised input has about a million pre-activations per layer, and some sample usually puts
    one within float32 rounding of zero, where torch and onnxruntime take different sides: the
    gradient then differs over that unit's receptive field (measured: up to 3% of the pixels of
    one sample, by up to 5% of the maximum). So: 90% of the values within 1e-4 of the largest
    magnitude (a wrong normalisation, sign, square or missing input factor moves them all) and a
    relative L2 error below 1e-2.
    """
    close = np.abs(ours - ref) <= 1e-4 * np.abs(ref).max()
    l2 = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    return bool(close.mean() > 0.9 and l2 < 1e-2)


@pytest.fixture
def fixed_noise(monkeypatch: pytest.MonkeyPatch, pair: Pair) -> np.ndarray:
    """Noise [SAMPLES, 4 rows, 3, H, W]; captum's batch row i, sample j gets ours[j, ROWS[i]]."""
    noise = 0.1 * np.random.default_rng(1).standard_normal((SAMPLES, 4, *pair.x.shape[1:]))
    noise = noise.astype(np.float32)
    theirs = torch.from_numpy(
        noise[:, ROWS].transpose(1, 0, 2, 3, 4).reshape(-1, *pair.x.shape[1:])
    )

    def add(inp: torch.Tensor, stdev: float, n: int) -> torch.Tensor:
        assert n == SAMPLES
        return inp.repeat_interleave(n, dim=0) + theirs

    monkeypatch.setattr(_NT, "_add_noise_to_input", staticmethod(add))
    return noise


def test_input_x_gradient(pair: Pair) -> None:
    xt = torch.from_numpy(pair.x.copy()).requires_grad_()
    ref = InputXGradient(pair.net).attribute(xt, target=TARGETS).detach().numpy()
    ours = perturb.input_x_gradient(pair.session, pair.x, target=Each(TARGETS))
    assert_close_but_for_flips(ours.extras["attributions"][ROWS], ref)
    np.testing.assert_allclose(ours.maps, ours.extras["attributions"].sum(axis=1))


@pytest.mark.parametrize(
    ("base", "explainer", "kind"),
    [
        *[("saliency", Saliency, kind) for kind in perturb.TUNNELS],
        ("input_x_gradient", InputXGradient, "vargrad"),
        ("guided_backprop", CaptumGuided, "smoothgrad_sq"),
    ],
)
def test_noise_tunnel(
    pair: Pair, fixed_noise: np.ndarray, base: str, explainer: type, kind: str
) -> None:
    xt = torch.from_numpy(pair.x.copy()).requires_grad_()
    nt = NoiseTunnel(explainer(pair.net))
    ref = nt.attribute(xt, nt_type=kind, nt_samples=SAMPLES, stdevs=0.1, target=TARGETS)
    prep = prepare(pair.session, pair.x, Each(TARGETS))
    ours = perturb.tunnel_from_noise(pair.session, prep, fixed_noise, base, kind)[ROWS]
    ref = ref.detach().numpy()
    assert agree(ours, ref)


def test_gradient_shap(pair: Pair, fixed_noise: np.ndarray) -> None:
    pool = np.random.default_rng(2).random((5, *pair.x.shape[1:]), dtype=np.float32)
    np.random.seed(11)
    xt = torch.from_numpy(pair.x.copy()).requires_grad_()
    ref = GradientShap(pair.net).attribute(
        xt, baselines=torch.from_numpy(pool), n_samples=SAMPLES, stdevs=0.1, target=TARGETS
    )
    np.random.seed(11)  # replay captum's draws: baseline indices, then the path points
    index = np.random.choice(len(pool), 2 * SAMPLES).reshape(2, SAMPLES)
    alpha = np.random.uniform(0.0, 1.0, 2 * SAMPLES).reshape(2, SAMPLES)
    drawn = np.zeros((SAMPLES, 4, *pair.x.shape[1:]), np.float32)
    points = np.zeros((SAMPLES, 4), np.float32)
    for i, r in enumerate(ROWS):
        drawn[:, r], points[:, r] = pool[index[i]], alpha[i]
    prep = prepare(pair.session, pair.x, Each(TARGETS))
    ours = perturb.shap_from_draws(pair.session, prep, drawn, points, fixed_noise)
    assert agree(ours[ROWS], ref.detach().numpy())


def test_gradient_shap_with_many_samples_nearly_completes(pair: Pair) -> None:
    """sum(attr) = S(x) - E S(baseline) holds in expectation; the error shrinks with samples."""
    errs = [
        abs(
            perturb.gradient_shap(
                pair.session, pair.x[:1], 3, baselines="uniform", samples=n, seed=3
            ).extras["completeness_error"][0]
        )
        for n in (2, 48)
    ]
    assert errs[1] < errs[0]


@pytest.mark.slow
def test_rise_against_the_torch_model_with_the_same_masks(pair: Pair) -> None:
    size = pair.session.info.input_size
    masks = perturb.rise_masks(40, size, cells=4, p=0.5, seed=5)
    assert masks.shape == (40, *size) and 0 <= masks.min() and masks.max() <= 1
    assert 0.3 < masks.mean() < 0.7
    ref = np.zeros((2, *size))
    with torch.no_grad():
        for m in masks:
            probs = softmax(pair.net(torch.from_numpy(pair.x * m)).numpy())
            for i, t in enumerate(TARGETS):
                ref[i] += probs[i, t] * m
    ref /= len(masks) * 0.5
    prep = prepare(pair.session, pair.x, Each(TARGETS))
    ours = perturb.rise_from_masks(pair.session, prep, masks, 0.5)
    assert rel_max(ours[ROWS], ref) < 1e-4
    full = perturb.rise(pair.session, pair.x, Each(TARGETS), samples=40, cells=4, seed=5).maps
    np.testing.assert_allclose(full, ours, rtol=1e-5)


def test_bad_options_are_one_line_errors(pair: Pair) -> None:
    with pytest.raises(OptionError, match="base method"):
        perturb.noise_tunnel(pair.session, pair.x, base="lrp")
    with pytest.raises(OptionError, match="noise tunnel"):
        perturb.noise_tunnel(pair.session, pair.x, kind="smooth")
    with pytest.raises(OptionError, match="p must"):
        perturb.rise(pair.session, pair.x, p=0.0)
