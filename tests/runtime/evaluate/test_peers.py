"""gradtap's versions of the peers' metrics against the peers' own code, on identical maps.

The model is the shipped custom CNN: the ONNX graph for gradtap, and the same graph wrapped as a
torch module (pixels in, logits out; the normalisation is inside the graph) for pytorch-grad-cam
and captum, so both sides score the same function and the same maps; only the metric code
differs. Where the numbers differ by definition, the test states the relation.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradtap.runtime.evaluate import peers
from gradtap.runtime.evaluate.data import synthetic_set
from gradtap.runtime.evaluate.maps import MapSettings, compute_maps
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import softmax
from tests import REPO

torch = pytest.importorskip("torch")
road_mod = pytest.importorskip("pytorch_grad_cam.metrics.road")
captum_metrics = pytest.importorskip("captum.metrics")

from pytorch_grad_cam.metrics.cam_mult_image import (  # noqa: E402
    DropInConfidence,
    IncreaseInConfidence,
)
from pytorch_grad_cam.metrics.perturbation_confidence import (  # noqa: E402
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget  # noqa: E402

SHIPPED = REPO / "models" / "smallcnn.gradtap.onnx"


class _Graph(torch.nn.Module):
    """The ONNX graph as a torch module (forward only), for the peers' metric code."""

    def __init__(self, session: ExplainSession) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.logits(x.detach().numpy().astype(np.float32)))


@pytest.fixture(scope="module")
def case():  # noqa: ANN201
    session = ExplainSession(SHIPPED)
    data = synthetic_set(session.info, 2)
    x = session.check_input(data.batch)
    t = np.array([c[0] for c in data.classes])
    maps = compute_maps(session, "gradcam", x, t, MapSettings())
    return session, x, t, maps


def _prob(session: ExplainSession, target: int):  # noqa: ANN202
    return lambda b: softmax(session.logits(np.asarray(b, np.float32)))[:, target]


def test_linear_imputation_matches_pytorch_grad_cam() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((3, 20, 24)).astype(np.float32)
    keep = rng.random((20, 24)) > 0.6  # 60 % imputed, with border pixels among them
    theirs = road_mod.NoisyLinearImputer(noise=0.0)(
        torch.from_numpy(img), torch.from_numpy(keep.astype(np.float32))
    )
    ours = peers.linear_impute(img, keep)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=2e-6)  # float32 on their side
    np.testing.assert_array_equal(ours[:, keep], img[:, keep])


def test_road_matches_pytorch_grad_cam_without_noise(case) -> None:  # noqa: ANN001
    session, x, t, maps = case
    model = _Graph(session)
    percentiles = (10, 50, 90)  # three of pytorch-grad-cam's nine, to keep the test fast
    i = 0
    cam = peers._unit(maps[i]).astype(np.float32)
    score = _prob(session, int(t[i]))
    ours, morf, lerf = peers.road(score, x[i], maps[i], percentiles=percentiles, noise=0.0)
    target = [ClassifierOutputSoftmaxTarget(int(t[i]))]
    inp = torch.from_numpy(x[i : i + 1])
    imp = road_mod.NoisyLinearImputer(noise=0.0)

    def avg(kind: type) -> float:
        scores = [
            PerturbationConfidenceMetric(kind(p, imp))(inp, cam[None], target, model)[0]
            for p in percentiles
        ]
        return float(np.mean(scores))

    their_morf, their_lerf = avg(RemoveMostRelevantFirst), avg(RemoveLeastRelevantFirst)
    assert morf == pytest.approx(their_morf, abs=1e-5)
    assert lerf == pytest.approx(their_lerf, abs=1e-5)
    assert ours == pytest.approx((their_lerf - their_morf) / 2, abs=1e-5)
    assert morf < 0.0  # removing Grad-CAM's top pixels lowers the probability
    # With noise the two differ only by the noise draws (numpy vs torch generators): a linear
    # imputation commutes with the per-channel normalisation, so pytorch-grad-cam's 0.01 in
    # normalised units is gradtap's 0.01 * std in pixels.


def test_average_drop_is_pytorch_grad_cams_drop_divided_by_the_score(case) -> None:  # noqa: ANN001
    session, x, t, maps = case
    model = _Graph(session)
    cams = np.stack([peers._unit(m) for m in maps]).astype(np.float32)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in t]
    inp = torch.from_numpy(x)
    drop = DropInConfidence()(inp, cams, targets, model)
    inc = IncreaseInConfidence()(inp, cams, targets, model)
    y = softmax(session.logits(x))[np.arange(len(x)), t]
    for i in range(len(x)):
        ours_drop, ours_inc = peers.confidence_change(_prob(session, int(t[i])), x[i], maps[i])
        # Chattopadhyay et al. divide by Y; pytorch-grad-cam reports max(0, Y - O) itself
        assert ours_drop * y[i] == pytest.approx(float(drop[i]), abs=1e-5)
        assert ours_inc == float(inc[i])


def test_infidelity_matches_captum(case) -> None:  # noqa: ANN001
    session, x, t, maps = case
    noise = np.random.default_rng(1).normal(0.0, 0.05, (6, *maps.shape[1:])).astype(np.float32)
    i = 0
    ours = peers.infidelity(_prob(session, int(t[i])), x[i], maps[i], noise=noise)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pert = torch.from_numpy(np.repeat(noise[:, None], 3, axis=1))
        return pert, inputs - pert

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(softmax(session.logits(inputs.numpy().astype(np.float32))))

    # the per-pixel map on three channels, a third on each, gives the same dot product I . map
    attr = torch.from_numpy(np.repeat(maps[i][None, None] / 3, 3, axis=1).astype(np.float64))
    theirs = captum_metrics.infidelity(
        forward,
        perturb,
        torch.from_numpy(x[i : i + 1]),
        attr,
        target=int(t[i]),
        n_perturb_samples=len(noise),
        normalize=True,
    )
    assert ours == pytest.approx(float(theirs[0]), rel=1e-4, abs=1e-9)


def _as_captum(explain):  # noqa: ANN001, ANN202
    """captum calls the explanation with a tuple of inputs first, then with a tensor."""

    def run(inp):  # noqa: ANN001, ANN202
        tensor = inp[0] if isinstance(inp, tuple) else inp
        return (torch.from_numpy(explain(tensor.numpy())),)

    return run


def test_max_sensitivity_matches_captum(case) -> None:  # noqa: ANN001
    session, x, t, maps = case
    i, target = 1, int(t[1])
    d = np.random.default_rng(2).uniform(-0.02, 0.02, (5, *x.shape[1:]))
    noise = (np.clip(x[i] + d, 0.0, 1.0) - x[i]).astype(np.float32)  # the maps need [0, 1]

    def explain(batch: np.ndarray) -> np.ndarray:
        b = np.asarray(batch, np.float32)
        return compute_maps(session, "gradcam", b, np.full(len(b), target), MapSettings())

    ours = peers.max_sensitivity(explain, x[i], maps[i], noise=noise)

    def perturb(inputs: torch.Tensor, perturb_radius: float = 0.02) -> torch.Tensor:
        return inputs + torch.from_numpy(noise)

    theirs = captum_metrics.sensitivity_max(
        _as_captum(explain),
        torch.from_numpy(x[i : i + 1]),
        perturb,
        n_perturb_samples=len(noise),
    )
    assert ours == pytest.approx(float(theirs[0]), rel=1e-5)
    assert ours > 0.0  # Grad-CAM does move under 0.02 noise
