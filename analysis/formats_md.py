"""summary.md of the formats report, rendered from its summary dict (`analysis.formats`)."""

from __future__ import annotations

from typing import Any

from analysis.law import bits_key
from analysis.repro_md import num, table


def pct(v: float | None) -> str:
    """A relative gap as a signed percentage; "–" for a missing one."""
    return "–" if v is None else f"{100 * v:+.2f}%"


def _ci(i: dict[str, Any], show: Any = pct) -> str:
    if i["value"] is None:
        return "–"
    ci = f" [{show(i['lo'])}, {show(i['hi'])}]" if i["lo"] is not None else ""
    return f"{show(i['value'])}{ci}"


_NONE = {"value": None}


def _frac(v: float | None) -> str:
    return "–" if v is None else f"{v:+.3f}"


def _loss_verdict(c: dict[str, Any]) -> str:
    if c["better"] is None:
        return "no difference beyond the noise"
    return f"**{c['better']} is better**"


def _f_verdict(c: dict[str, Any]) -> str:
    if not c["f_differs"]:
        return "no difference shown"
    side = "larger" if c["f_diff"]["value"] > 0 else "smaller"
    p = c["sign_test_p"]
    # The bootstrap over a few cells is rough: say when the sign test does not back it.
    weak = (
        " (by the interval; the sign test alone is not significant)"
        if p is None or p > 0.05
        else ""
    )
    return f"**{c['a']}'s f* is {side}**{weak}"


def _short_verdict(c: dict[str, Any]) -> str:
    short = c["short_qat"]
    if not short["cells"]:
        return "not compared (no cells with the same lowest fraction)"
    if not short["differs"]:
        return "no difference shown"
    steeper = c["a"] if short["diff"]["value"] > 0 else c["b"]
    return f"**{steeper} loses more to a short QAT phase**"


def md_header(s: dict[str, Any]) -> list[str]:
    g = s["grid"]
    rows = [
        [f["label"], f["format"], bits_key(f["B"]), bits_key(f["width"]), str(f["runs"])]
        for f in g["formats"]
    ]
    return [
        "# Number formats report",
        "",
        f"- source: {s['source']}",
        f"- runs: {g['runs']} ({g['classic_qat']} classic QAT, {g['fp_only']} FP-only)",
        f"- sizes N: {', '.join(f'{n:.3g}' for n in g['sizes'])}; tokens per parameter: "
        f"{', '.join(f'{t:g}' for t in g['tokens_per_param'])}; QAT fractions: "
        f"{', '.join(f'{f:g}' for f in g['fractions'])}",
        "",
        *table(["format", "quant.format", "bits per weight B", "element bits", "runs"], rows),
        "Formats compete within an element width (the bits of one stored element). At the same N "
        "and D_total they are compared on the runs; a format whose block scales cost bits per "
        "weight (MXFP4 4.25, NVFP4 4.5) then also stores more bytes, so section 4 compares the "
        "same formats through the fitted law at equal weight memory and training compute.",
        "",
    ]


def md_in_short(s: dict[str, Any]) -> list[str]:
    """The two answers, one line per pair of formats at equal bits per weight, then the law's
    winners at equal memory: what the rest of the report backs up."""
    lines = ["## In short", ""]
    for c in s["comparisons"]:
        if not c["cells"] or not c["equal_bits"]:
            continue
        lines.append(
            f"- {c['a']} vs {c['b']} ({bits_key(c['B_a'])} bits per weight, {c['cells']} "
            f"cells): loss at f* {_loss_verdict(c)} (gap {_ci(c['loss_gap'])}); f*: "
            f"{_f_verdict(c)} (f*_a − f*_b {_ci(c['f_diff'], _frac)}); a short QAT phase: "
            f"{_short_verdict(c)} (P_a − P_b {_ci(c['short_qat'].get('diff', _NONE))})"
        )
    em = s["equal_memory"]
    if em.get("available", True):
        for width, w in em.items():
            wins = ", ".join(f"{k} {v}" for k, v in w["wins"].items())
            lines.append(
                f"- {width}-bit elements at equal memory and compute, through the law: cells "
                f"won {wins}"
            )
    return [*lines, ""]


def md_winners(s: dict[str, Any]) -> list[str]:
    lines = ["## 1. Which format wins (runs, same N and D_total)", ""]
    cmp_rows = [
        [
            f"{c['a']} vs {c['b']}",
            f"{bits_key(c['B_a'])} / {bits_key(c['B_b'])}",
            str(c["cells"]),
            _ci(c["loss_gap"]),
            f"{c['a_wins']} / {c['b_wins']}",
            _loss_verdict(c),
        ]
        for c in s["comparisons"]
        if c["cells"]
    ]
    lines += [
        "Loss at f*: the mean relative gap L*_a / L*_b − 1 over the cells both formats have "
        "(< 0: a is better), 95% interval from a bootstrap over cells and replicates.",
        "",
        *table(
            ["pair", "B (a / b)", "cells", "loss gap a vs b [95%]", "cells won (a / b)", ""],
            cmp_rows,
        ),
    ]
    for width, w in s["winners"].items():
        wins = ", ".join(f"{k} {v}" for k, v in w["wins"].items())
        gaps = ", ".join(f"{k} {pct(v)}" for k, v in w["mean_gap_to_best"].items())
        lines += [
            f"{width}-bit elements: cells won: {wins}; mean gap to the cell's best: {gaps}.",
            "",
        ]
        rows = [
            [
                f"{c['N']:.3g}",
                f"{c['D_total']:.3g}",
                *(num(c["losses"].get(lab), ".4f") for lab in w["formats"]),
                c["winner"],
                f"{100 * c['share']:.0f}%",
            ]
            for c in w["cells"]
        ]
        lines += table(
            ["N", "D_total", *(f"L* {lab}" for lab in w["formats"]), "best", "in replicates"],
            rows,
        )
    return lines


def md_f_star(s: dict[str, Any]) -> list[str]:
    lines = [
        "## 2. Does f* differ between formats?",
        "",
        f"f* is the grid fraction of lowest loss; 95% intervals from replicates (noise "
        f"{100 * (s['noise']['value'] or 0):.3f}% from {s['noise']['source']}). Per pair: the "
        "mean of f*_a − f*_b over the cells both have, bootstrapped over cells and replicates, "
        "and a two-sided sign test over the cells where the two differ.",
        "",
    ]
    rows = [
        [
            f"{c['a']} vs {c['b']}",
            str(c["cells"]),
            _ci(c["f_diff"], _frac),
            f"{c['f_larger']} / {c['f_smaller']} / {c['f_equal']}",
            num(c["sign_test_p"], ".3f"),
            _f_verdict(c),
        ]
        for c in s["comparisons"]
        if c["cells"]
    ]
    lines += table(
        ["pair", "cells", "f*_a − f*_b [95%]", "a larger / smaller / equal", "sign test p", ""],
        rows,
    )
    lines += md_short_qat(s)
    cell_rows = [
        [
            f"{c['N']:.3g}",
            f"{c['D_total']:.3g}",
            c["label"],
            bits_key(c["B"]),
            f"{c['S_total']:.0f}",
            f"{c['f_star']:g} [{c['f_lo']:g}, {c['f_hi']:g}]",
            c["censored"] or "–",
            num(c["loss_star"], ".4f"),
            num(c.get("law_f_star"), ".3f"),
        ]
        for c in s["cells"]
    ]
    lines += table(
        ["N", "D_total", "format", "B", "S_total", "f* runs [95%]", "censored", "L*", "f* law"],
        cell_rows,
    )
    return lines


def md_short_qat(s: dict[str, Any]) -> list[str]:
    """What a short QAT phase costs each format of a pair: the answer f* cannot give where it
    sits at the grid's top fraction."""
    rows = []
    for c in s["comparisons"]:
        short = c["short_qat"]
        if not short["cells"]:
            continue
        rows.append(
            [
                f"{c['a']} vs {c['b']}",
                str(short["cells"]),
                ", ".join(f"{f:g}" for f in short["fractions"]),
                f"{pct(short['penalty_a'])} / {pct(short['penalty_b'])}",
                _ci(short["diff"]),
                f"{short['a_steeper']} / {short['b_steeper']}",
                _short_verdict(c),
            ]
        )
    if not rows:
        return []
    return [
        "Where f* sits at the grid's top fraction it cannot tell formats apart, but the curve "
        "still can: P = L(f_low) / L* − 1 is what the grid's lowest QAT fraction f_low costs "
        "against the cell's best. A format that needs more QAT loses more to a short QAT phase. "
        "Per pair, the mean of P_a − P_b over the cells both have (same f_low), bootstrapped "
        "over cells and replicates.",
        "",
        *table(
            [
                "pair",
                "cells",
                "f_low",
                "P a / b (mean)",
                "P_a − P_b [95%]",
                "a / b steeper",
                "",
            ],
            rows,
        ),
    ]


def md_law(s: dict[str, Any]) -> list[str]:
    law = s["law"]
    lines = ["## 3. The law with a factor per format", ""]
    if not law.get("available", True):
        return [*lines, f"Not available: {law['why']}.", ""]
    ci = law["ci"]

    def with_ci(k: str, v: float) -> list[str]:
        i = ci.get(k)
        return [k, f"{v:.5g}", f"[{i[0]:.4g}, {i[1]:.4g}]" if i else "–"]

    bounds = [f"{p} (FP stage)" for p in law["at_bounds"]["fp"]] + list(law["at_bounds"]["qat"])
    by = ", ".join(f"{k}: {v:.4f}" for k, v in law["r2_by_label"].items())
    lines += [
        f"`{law['formula']}`",
        "",
        f"- formats: {', '.join(law['formats'])} (the first is the base; each other one has a "
        "factor on θ, φ and λ)",
        f"- Chinchilla part anchored on {law['fp_points']} FP points: R² = {law['fp_r2']:.5f}",
        f"- QAT terms on {law['n_points']} classic QAT runs: R² = {law['r2']:.5f}; by format: {by}",
        f"- at a bound (the bound, not the data, set them): {', '.join(bounds) or 'none'}",
        f"- intervals: {law['bootstrap']} cluster-bootstrap resamples"
        + ("" if law["bootstrap"] else " (none: run with --bootstrap N for them)"),
        "",
        *table(["factor", "value", "95% CI"], [with_ci(k, v) for k, v in law["factors"].items()]),
        *table(["parameter", "value", "95% CI"], [with_ci(k, v) for k, v in law["params"].items()]),
    ]
    return lines


def md_equal_memory(s: dict[str, Any]) -> list[str]:
    em = s["equal_memory"]
    lines = ["## 4. At equal memory and compute, through the law", ""]
    if not em.get("available", True):
        return [*lines, f"Not available: {em['why']}.", ""]
    lines += [
        "For each (N, D_total) of the grid: weight memory M = N·B_min/8 (the cell's model in its "
        "element width's leanest format) and compute C = 6·N·D_total; each format has N_f = 8M/B_f "
        "parameters, D_f = C/(6·N_f) tokens and its own law-optimal fraction. The law's verdict, "
        "only as good as its fit (section 3).",
        "",
    ]
    for width, w in em.items():
        labels = list(w["wins"])
        wins = ", ".join(f"{k} {v}" for k, v in w["wins"].items())
        rows = [
            [
                f"{c['N']:.3g}",
                f"{c['D_total']:.3g}",
                f"{c['memory']:.3g}",
                *(f"{c['losses'][lab]:.4f} (f* {c['f_star'][lab]:.2f})" for lab in labels),
                c["winner"],
            ]
            for c in w["cells"]
        ]
        lines += [
            f"{width}-bit elements (B_min = {bits_key(w['reference_bits'])}): cells won: {wins}.",
            "",
            *table(["N", "D_total", "M (bytes)", *(f"L {lab}" for lab in labels), "best"], rows),
        ]
    return lines


def render_markdown(s: dict[str, Any]) -> str:
    parts = [
        md_header(s),
        md_in_short(s),
        md_winners(s),
        md_f_star(s),
        md_law(s),
        md_equal_memory(s),
    ]
    return "\n".join(line for p in parts for line in p).rstrip() + "\n"
