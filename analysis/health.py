"""Whether a fitted law deserves trust beyond its R²: the signs a fit can show that its
parameters were decided by the bounds or by a degenerate basin, not by the data.

A law can fit its grid to R² 0.995 with no irreducible loss and exponents pinned at their limits;
its in-grid predictions may then be fine while every extrapolation is arbitrary.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from analysis.law import FACTOR_RANGE, FittedLaw

# An irreducible loss below this share of the smallest fitted loss is no irreducible loss at all;
# for a law that does not record its losses, below this many nats.
IRREDUCIBLE_SHARE = 0.01
IRREDUCIBLE_NATS = 0.01
_FEATURE = {
    "log_D": "D_total",
    "log_N": "N",
    "B_ln2": "the bit width B",
    "log_S_fp": "S_fp",
    "log_S_qat": "S_qat",
}


class HealthProblem(NamedTuple):
    """One sign of an untrustworthy fit: a few words (`short`) and the full sentence (`line`)."""

    short: str
    line: str


def _expects_positive(feature: str, term_features: set[str]) -> bool:
    """More data, parameters or bits should lower each term; only the size dependence of a
    quantization term (a term with a bit-width feature) may go either way."""
    return not (feature == "log_N" and "B_ln2" in term_features)


def fit_health(fitted: FittedLaw) -> list[HealthProblem]:
    """Every sign of an untrustworthy fit; an empty list if there is none.

    Checks: parameters that ended on a bound of the fit, an irreducible loss (alpha) of about 0,
    and exponents of the wrong sign (a term that grows with tokens, parameters or bits).
    """
    law, p = fitted.law, fitted.params
    out = []
    factors = set(law.factor_names)
    for name in fitted.settings.get("at_bounds", []):
        if name in factors:
            lo, hi = FACTOR_RANGE
            edge = lo if abs(math.log(p[name] / lo)) <= abs(math.log(p[name] / hi)) else hi
            what = f"sits at its bound {edge:g} (allowed {lo:g} to {hi:g})"
        elif name in law.exponent_bounds:
            lo, hi = law.exponent_bounds[name]
            edge = lo if abs(p[name] - lo) <= abs(p[name] - hi) else hi
            what = f"sits at its bound {edge:g} (allowed {lo:g} to {hi:g})"
        else:
            what = "has its term at the edge of the allowed range at the data's centre"
        out.append(
            HealthProblem(
                f"{name} at a bound",
                f"{name}={p[name]:.3g} {what}: the bound decided it, not the data",
            )
        )
    alpha = p.get("alpha")
    loss_range = (fitted.domain or {}).get("loss")
    if alpha is not None:
        if loss_range is not None:
            limit = IRREDUCIBLE_SHARE * float(loss_range[0])
            why = f"< {IRREDUCIBLE_SHARE:.0%} of the smallest fitted loss {loss_range[0]:.3g}"
        else:
            limit, why = IRREDUCIBLE_NATS, f"< {IRREDUCIBLE_NATS:g} nats"
        if alpha < limit:
            out.append(
                HealthProblem(
                    "alpha ≈ 0",
                    f"alpha={alpha:.2g} ≈ 0: no irreducible loss ({why}); extrapolated losses "
                    "fall toward 0 with scale",
                )
            )
    for term in law.terms:
        features = {f for _, f in term.powers}
        for exponent, feature in term.powers:
            if exponent in factors:
                continue  # a format's factor may go either way: its term is larger or smaller
            if _expects_positive(feature, features) and p[exponent] < 0:
                out.append(
                    HealthProblem(
                        f"{exponent} < 0",
                        f"{exponent}={p[exponent]:.3g} < 0: the {term.coef} term grows with "
                        f"{_FEATURE[feature]}, the wrong sign for more data, parameters or bits",
                    )
                )
    return out


def health_lines(fitted: FittedLaw) -> list[str]:
    """The fit's health as lines for a report or a CLI's last lines."""
    problems = fit_health(fitted)
    if not problems:
        return [
            "fit health: no parameter at a bound, an irreducible loss > 0, exponents of the "
            "expected sign"
        ]
    head = (
        f"fit health: {len(problems)} warning{'s' if len(problems) > 1 else ''}; "
        "in-grid predictions may hold, extrapolations should not be trusted"
    )
    return [head, *(f"- {p.line}" for p in problems)]


def health_summary(fitted: FittedLaw) -> str | None:
    """One line naming the fit's problems (for a prediction's warnings), or None if healthy."""
    problems = fit_health(fitted)
    if not problems:
        return None
    return (
        f"the fit has {len(problems)} health warning{'s' if len(problems) > 1 else ''} "
        f"({', '.join(p.short for p in problems)}): its extrapolations deserve little trust; "
        "see the fit's law.md"
    )
