"""`python -m analysis.predict`: a fitted law's answer to one question, and where it stops.

    python -m analysis.predict --law DIR/law.json --n 1.2e9 --tokens 100B --bits 4 [--json]
    python -m analysis.predict --law DIR/law.json --n 1.2e9 --pretrained-tokens 2T --bits 4
    python -m analysis.predict --law DIR/law.json --memory-gb 2 --flops 1e21
    python -m analysis.predict --law DIR/law.json --n 1.2e9 --tokens 100B --format mxfp4

`--format` (default int, the integer family) answers for a number format the law was fitted on,
at its bits per weight with the block scales counted (MXFP4: 4.25); any other format is refused.
Every answer says where it leaves the law's domain (the ranges of the runs it was fitted on,
recorded in law.json): one warning line per quantity outside, with how far. Bit widths the law
has no runs for are refused unless --interpolate-bits is given. Losses are nats per token of the
vocabulary the runs were measured on; waste is in % of D_total. Counts take 2M, 1e11, 100B, 2.5k.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from analysis.domain import (
    bits_problem,
    format_bits,
    loss_unit,
    nearest_inside,
    outside,
    question_warnings,
)
from analysis.errors import AnalysisError
from analysis.health import health_summary
from analysis.law import FP_BITS, INT_FORMAT, FittedLaw, bits_key, load_law
from analysis.predict import (
    MAX_WASTE,
    WASTE_FRAC,
    loss_at,
    optimal_bits,
    optimal_fraction,
    require_positive,
    wasted_tokens,
)
from qat.errors import ConfigError
from qat.units import parse_count


def _waste_text(wasted: float, frac: float = WASTE_FRAC) -> str:
    if math.isinf(wasted):
        return f"never matches it within {MAX_WASTE:,.0f} × D_total (the search range)"
    return f"{100 * wasted:.1f}% more tokens to match it"


def _count(flag: str, value: str | None, unit: str) -> float | None:
    return None if value is None else float(parse_count(value, flag, unit))


def _number(flag: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise AnalysisError(f"{flag}={value!r} must be a positive number, e.g. 4 or 1.58")
    return number


class Answer:
    """What the CLI prints: result lines (stdout), warnings (stderr) and the JSON form."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.warnings: list[str] = []
        self.data: dict = {}

    def emit(self, as_json: bool) -> int:
        """The answer on stdout, then one line per warning on stderr; the exit status."""
        if as_json:
            print(json.dumps({**self.data, "warnings": self.warnings}), flush=True)
        else:
            print("\n".join(self.lines), flush=True)
        self.warn()
        return 0

    def warn(self) -> None:
        for w in self.warnings:
            print(f"warning: {w}", file=sys.stderr)


def resolve_format(fitted: FittedLaw, fmt: str, bits: float | None) -> float | None:
    """The law's B for a question about format `fmt`: `bits` for the integer family, the format's
    bits per weight (block scales counted) for a float one. Refuses, in one line, a format the
    law was not fitted on and a --bits other than the format's element width."""
    fitted_formats = ", ".join(fitted.law.formats)
    if fmt != INT_FORMAT:
        from qat.quant.formats import FLOAT_FORMATS  # torch: only for a float format

        if fmt not in FLOAT_FORMATS:
            allowed = ", ".join([INT_FORMAT, *FLOAT_FORMATS])
            raise AnalysisError(f"--format {fmt!r} is unknown; allowed: {allowed}")
    if fmt not in fitted.law.formats:
        raise AnalysisError(
            f"--format {fmt}: the law was fitted on formats {fitted_formats} only, so it has no "
            f"factor for {fmt}; fit it on runs of {fmt} to ask"
        )
    if fmt == INT_FORMAT:
        return bits
    spec = FLOAT_FORMATS[fmt]
    assert spec.element is not None  # every float format has one
    if bits is not None and bits != spec.element.bits:
        raise AnalysisError(
            f"--format {fmt} stores {spec.element.bits}-bit elements; --bits {bits:g} disagrees "
            f"(give --bits {spec.element.bits} or leave it out)"
        )
    return spec.bits


def _domain_checks(
    fitted: FittedLaw, bits: float, interpolate: bool, ans: Answer, fmt: str = INT_FORMAT
) -> None:
    """Refuse (or, with --interpolate-bits, warn about) bit widths the law has no runs for."""
    if fitted.domain is None:
        ans.warnings.append(
            "the law records no domain (fitted before domains were recorded): whether this "
            "question lies inside the runs it was fitted on is unknown; refit to record it"
        )
        # A qat law is fitted on QAT runs only (analysis.fit.select_rows), domain or not.
        problem = None
        if not fitted.law.fp_only and bits >= FP_BITS:
            problem = (
                f"bits={bits_key(bits)} (full precision): a qat law is fitted on QAT runs only, "
                "so its FP loss is the formula's B → ∞ limit"
            )
    else:
        problem = bits_problem(fitted.domain, bits, fmt)
    if problem and not interpolate:
        raise AnalysisError(f"{problem}; pass --interpolate-bits to answer anyway")
    if problem:
        ans.warnings.append(f"{problem}; answered by the formula anyway (--interpolate-bits)")


def _health_warning(fitted: FittedLaw, ans: Answer) -> None:
    summary = health_summary(fitted)
    if summary:
        ans.warnings.append(summary)


def _format_line(fmt: str, bits: float, ans: Answer) -> None:
    """A float format's answer starts by saying which B it is for (the integer family's does not:
    its B is the --bits asked)."""
    if fmt != INT_FORMAT:
        ans.lines.append(f"format {fmt}: {bits_key(bits)} bits per weight (block scales counted)")
        ans.data |= {"format": fmt, "bits_per_weight": bits}


def answer_fraction(
    fitted: FittedLaw,
    n: float,
    d_total: float,
    bits: float,
    interpolate: bool,
    fmt: str = INT_FORMAT,
) -> Answer:
    """The optimal QAT fraction and loss at (N, D_total, B) for format `fmt` (B: its bits per
    weight), with warnings where the question leaves the law's domain and the law's own answer
    at the nearest question inside it."""
    ans = Answer()
    require_positive(n=n, tokens=d_total, bits=bits)
    _domain_checks(fitted, bits, interpolate, ans, fmt)
    unit = loss_unit(fitted.domain)
    _format_line(fmt, bits, ans)
    if bits >= FP_BITS:
        frac, loss = 0.0, float(loss_at(fitted, n, d_total, bits, 0.0))
        ans.lines.append("full precision: no QAT phase")
    else:
        frac, loss = optimal_fraction(fitted, n, d_total, bits, fmt)
        ans.lines.append(f"optimal QAT fraction: {frac:.4f}")
    ans.lines.append(f"predicted loss:       {loss:.4f} {unit}")
    ans.data |= {"qat_frac": frac, "loss": loss, "loss_unit": unit}
    if bits < FP_BITS:
        wasted = wasted_tokens(fitted, n, d_total, bits, WASTE_FRAC, fmt)
        ans.lines.append(f"QAT fraction {WASTE_FRAC:g} instead: {_waste_text(wasted)}")
        # null: never within the search range (JSON has no inf)
        ans.data[f"wasted_pct_at_{WASTE_FRAC:g}"] = None if math.isinf(wasted) else 100 * wasted
    dom = fitted.domain
    if dom is not None:
        ans.warnings += question_warnings(dom, n, d_total, bits, frac)
        n_in, d_in = nearest_inside(dom, n, d_total, bits)
        if bits < FP_BITS and not (math.isclose(n_in, n) and math.isclose(d_in, d_total)):
            f_in, _ = optimal_fraction(fitted, n_in, d_in, bits, fmt)
            s_in = d_in / (n_in * bits / 8)
            ans.lines.append(
                f"extrapolated: at the nearest question inside the fitted domain (N={n_in:.3g}, "
                f"D_total={d_in:.3g}, S_total={s_in:.3g}) the law's optimal fraction is {f_in:.4f}"
            )
            ans.data["nearest_inside"] = {"N": n_in, "D_total": d_in, "qat_frac": f_in}
    _health_warning(fitted, ans)
    return ans


def answer_memory(
    fitted: FittedLaw,
    memory_gb: float,
    compute: float,
    interpolate: bool,
    fmt: str = INT_FORMAT,
    fmt_bits: float | None = None,
) -> Answer:
    """The best (N, B) and its optimal fraction under a weight-memory budget at given compute
    (`optimal_bits` over the bit widths the law was fitted on). A float format `fmt` has one B,
    `fmt_bits`, its bits per weight with the block scales counted: N = 8M/B fills the budget with
    the scales."""
    ans = Answer()
    require_positive(memory_gb=memory_gb, flops=compute)
    dom = fitted.domain
    if fmt != INT_FORMAT:
        assert fmt_bits is not None  # resolve_format gives a float format's bits per weight
        _domain_checks(fitted, fmt_bits, interpolate, ans, fmt)
        bits = [fmt_bits]
    elif dom is None:
        _domain_checks(fitted, 4.0, interpolate, ans)
        bits = [1.0, 2.0, 4.0, 6.0, 8.0, FP_BITS] if not fitted.law.fp_only else [FP_BITS]
    else:
        bits = format_bits(dom, INT_FORMAT)
        if interpolate:
            bits = sorted({*bits, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, FP_BITS})
            if fitted.law.fp_only:
                bits = [FP_BITS]
    table = optimal_bits(fitted, memory_gb * 1e9, compute, bits, fmt)
    best = table[table.best].iloc[0]
    unit = loss_unit(dom)
    _format_line(fmt, bits[0], ans)
    ans.lines.append(
        f"best under {memory_gb:g} GB of weights at {compute:.3g} FLOPs: "
        f"{bits_key(best.bits)} bits, N={best.N:.3g}, D_total={best.D_total:.3g}, "
        f"QAT fraction {best.qat_frac:.4f}, loss {best.loss:.4f} {unit}"
    )
    ans.lines.append("bits  N          D_total    QAT fraction  loss")
    for r in table.itertuples():
        mark = "  <- best" if r.best else ""
        ans.lines.append(
            f"{bits_key(r.bits):<5} {r.N:<10.3g} {r.D_total:<10.3g} {r.qat_frac:<13.4f} "
            f"{r.loss:.4f}{mark}"
        )
    ans.data |= {
        "memory_gb": memory_gb,
        "flops": compute,
        "loss_unit": unit,
        "best": {
            "bits": float(best.bits),
            "N": float(best.N),
            "D_total": float(best.D_total),
            "qat_frac": float(best.qat_frac),
            "loss": float(best.loss),
        },
        "by_bits": table.drop(columns=["memory", "compute"]).to_dict(orient="records"),
    }
    if dom is not None:
        ans.warnings += question_warnings(
            dom, float(best.N), float(best.D_total), float(best.bits), float(best.qat_frac)
        )
    _health_warning(fitted, ans)
    return ans


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.predict",
        description="Optimal QAT fraction and predicted loss of a fitted law, or the best "
        "(N, bits) under a memory budget. Counts take 1.2e9, 350M, 100B, 2.5k.",
    )
    ap.add_argument("--law", required=True, help="law JSON written by analysis.fit_law")
    ap.add_argument("--n", help="non-embedding parameters N, e.g. 1.2e9 or 350M")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--tokens", help="total training tokens D_total, e.g. 1e11 or 100B")
    budget.add_argument(
        "--pretrained-tokens",
        help="D_fp of a model already pretrained: how many QAT tokens it deserves",
    )
    ap.add_argument("--bits", help="bit width B (16 = full precision)")
    ap.add_argument(
        "--format",
        default=INT_FORMAT,
        help="number format the law was fitted on (default int, the integer family): a float "
        "format answers at its bits per weight, block scales counted (mxfp4: 4.25); --bits, if "
        "given, must be its element width",
    )
    ap.add_argument(
        "--memory-gb",
        help="weight-memory budget in GB (1e9 bytes of N·B/8): answers the best (N, bits) at the "
        "compute of --flops, or of 6·N·D from --n and --tokens",
    )
    ap.add_argument("--flops", help="training compute C in FLOPs (with --memory-gb), e.g. 1e21")
    ap.add_argument(
        "--interpolate-bits",
        action="store_true",
        help="answer for bit widths the law was not fitted on (refused without this flag)",
    )
    ap.add_argument("--json", action="store_true", help="print the answer as JSON")
    args = ap.parse_args(argv)
    try:
        n = _count("--n", args.n, "parameters")
        tokens = _count("--tokens", args.tokens, "tokens")
        pretrained = _count("--pretrained-tokens", args.pretrained_tokens, "tokens")
        flops = _count("--flops", args.flops, "FLOPs")
        bits = _number("--bits", args.bits)
        memory_gb = _number("--memory-gb", args.memory_gb)
        fmt = args.format
        if memory_gb is not None:
            if bits is not None or pretrained is not None:
                raise AnalysisError("--memory-gb chooses the bit width: leave out --bits")
            if flops is None and (n is None or tokens is None):
                raise AnalysisError(
                    "--memory-gb needs a compute budget: --flops, or --n and --tokens"
                )
            compute = flops if flops is not None else 6.0 * n * tokens  # type: ignore[operator]
            fitted = load_law(args.law)
            fmt_bits = resolve_format(fitted, fmt, None)
            return answer_memory(
                fitted, memory_gb, compute, args.interpolate_bits, fmt, fmt_bits
            ).emit(args.json)
        needs_bits = bits is None and fmt == INT_FORMAT
        if n is None or needs_bits or (tokens is None and pretrained is None):
            raise AnalysisError(
                "give --n, --bits (or a float --format) and --tokens (or --pretrained-tokens), "
                "or --memory-gb with --flops"
            )
        fitted = load_law(args.law)
        bits = resolve_format(fitted, fmt, bits)
        assert bits is not None  # the integer family's --bits is required above
        if pretrained is not None:
            from analysis.pretrained import answer

            pre = Answer()
            _domain_checks(fitted, bits, args.interpolate_bits, pre, fmt)
            if fitted.domain is not None:
                checks = (("N", n), ("D_fp", pretrained))
                pre.warnings += [w for k, v in checks if (w := outside(fitted.domain, k, v))]
            _health_warning(fitted, pre)
            unit = loss_unit(fitted.domain)
            code = answer(args.law, n, pretrained, bits, args.json, unit, fmt)
            sys.stdout.flush()
            if code == 0:
                pre.warn()
            return code
        assert tokens is not None
        return answer_fraction(fitted, n, tokens, bits, args.interpolate_bits, fmt).emit(args.json)
    except (AnalysisError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
