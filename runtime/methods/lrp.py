"""Layer-wise relevance propagation over the graph's own LRP walk (``relu_rule`` codes 3-13).

The explanation graph computes the relevance (export/graph/lrp.py); this method feeds the
composite's code, reads ``grad/input`` (then the relevance of the normalised input, pixel by
pixel) and scales it to the explained logit: the walk is linear in the seed, so a one-hot seed
times the logit gives the relevance of ``R_out = logit``, and the conservation error is the
relevance's sum minus the logit (what biases and stabilisers absorb or add).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gradtap.runtime import contract as c
from gradtap.runtime.errors import ModelError, OptionError
from gradtap.runtime.methods.base import Explanation, finish, prepare
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec

Array = npt.NDArray[np.float32]
LRP_COMPOSITES = tuple(name.removeprefix("lrp_") for name in c.LRP_RULES)
"""The ``lrp_rule`` option's values: ``epsilon``, ``zplus``, ..., ``epsilon_plus_box``."""


def lrp(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    lrp_rule: str = "epsilon_plus",
) -> Explanation:
    """Layer-wise relevance propagation (Bach et al. 2015,
    https://doi.org/10.1371/journal.pone.0130140), with zennit's rules and composites.

    Args:
        lrp_rule: the composite, one of ``LRP_COMPOSITES`` (README, "LRP"): e.g. ``epsilon_plus``
            (z+ convolutions, epsilon dense layers), ``epsilon_plus_box`` (zB first layer).

    Returns:
        Maps [R, H, W] (the relevance summed over channels); ``extras``: ``relevance``
        [R, 3, H, W], ``logit`` [R] (the explained logit, the relevance put in) and
        ``conservation_error`` [R] = sum(relevance) - logit.
    """
    if lrp_rule not in LRP_COMPOSITES:
        raise OptionError(f"unknown lrp_rule {lrp_rule!r}; valid: {list(LRP_COMPOSITES)}")
    code = "lrp_" + lrp_rule
    carried = [r.removeprefix("lrp_") for r in session.info.relu_rules if r in c.LRP_RULES]
    if code not in session.info.relu_rules and carried:
        raise ModelError(
            f"model {session.info.name!r} carries the LRP composite(s) {carried} only (a flat "
            f"graph carries one): choose one of them, or augment with --lrp-composite {lrp_rule}"
        )
    if code not in session.info.relu_rules:
        raise ModelError(
            f"model {session.info.name!r} has no LRP walk: augment its forward graph with "
            "--lrp (gradtap augment --lrp, gradtap export NAME --lrp); a graph whose gradient "
            "path has an op without a relevance rule gets none (README, LRP in the graph)"
        )
    prep = prepare(session, x, target, defer_top1=True)
    run = session.run(prep.x, prep.seed, relu_rule=code, top1=prep.top1)
    prep = prep.settled(run.logits)
    rows = np.arange(len(prep.x))
    logit = run.logits[rows, prep.rows.target]
    assert run.grad_input is not None
    relevance = run.grad_input * logit[:, None, None, None]
    extras = {
        "relevance": relevance,
        "logit": logit,
        "conservation_error": relevance.sum(axis=(1, 2, 3)) - logit,
    }
    maps = relevance.sum(axis=1)
    return finish("lrp", maps, prep, session, row_logits=run.logits, extras=extras)
