"""summary.md of the reproduction report, rendered from its summary dict (`analysis.repro`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis.law import bits_key


def plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, tuples to lists, nan/inf to None, keys to strings."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def num(v: Any, fmt: str = ".4f") -> str:
    """A number for a table; "–" for a missing one."""
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def interval(i: dict[str, Any], fmt: str = ".3f") -> str:
    """ "value [lo, hi]" of an `analysis.optima.Interval`."""
    if i["value"] is None:
        return "–"
    ci = f" [{num(i['lo'], fmt)}, {num(i['hi'], fmt)}]" if i["lo"] is not None else ""
    return f"{num(i['value'], fmt)}{ci}"


def _unavailable(title: str, s: dict[str, Any]) -> list[str] | None:
    return None if s.get("available", True) else [title, "", f"Not available: {s['why']}.", ""]


def md_fit(f: dict[str, Any]) -> list[str]:
    ci = f["ci"] or {}
    bounds = f["at_bounds"]
    hit = [f"{p} (FP stage)" for p in bounds["fp"]] + list(bounds["qat"])
    lines = [
        "## 1. Law fit, Chinchilla part anchored on FP losses",
        "",
        f"`{f['formula']}`",
        "",
        f"- stage 1: chinchilla law on {f['fp_points']} FP points (FP-only runs and classic runs' "
        f"FP-phase loss): R² = {num(f['fp_r2'], '.5f')}",
        f"- stage 2: QAT terms on {f['n_points']} classic QAT runs, Chinchilla part held: "
        f"R² = {num(f['r2'], '.5f')}; by bit width: "
        + ", ".join(f"{k}: {num(v, '.4f')}" for k, v in f["r2_by_bits"].items()),
        "- **at a bound (the bound, not the data, set them): "
        + (", ".join(hit) if hit else "none")
        + "**",
        "",
        *table(
            ["parameter", "value", "95% CI (cluster bootstrap)"],
            [
                [k, f"{v:.5g}", f"[{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else "–"]
                for k, v in f["params"].items()
            ],
        ),
    ]
    h = f["held_out"]
    if not h["available"]:
        return [*lines, f"Held-out size: not available ({h['why']}).", ""]
    return [
        *lines,
        f"Held out: refit without N = {h['held_out_N']:.4g}, predicting its {h['test_points']} "
        f"classic runs: R² = {num(h['r2'], '.4f')}, mean relative error "
        f"{num(100 * h['mean_rel_error'], '.2f')}%; by bit width: "
        + ", ".join(f"{k}: R² {num(v['r2'], '.3f')}" for k, v in h["by_bits"].items()),
        "",
    ]


def md_optima(o: dict[str, Any]) -> list[str]:
    title = "## 2. Optimal QAT fraction f* per cell"
    if (u := _unavailable(title, o)) is not None:
        return u
    t = o["trend"]
    law = o["law_trend"]
    law_rho = f"{law['rho']:+.3f}" if law["rho"] is not None else "undetermined"
    lines = [
        title,
        "",
        f"f* is the grid fraction of lowest loss; 95% intervals from replicates (seeds resampled "
        f"where a cell has >= 2, else noise at {100 * o['noise']:.3f}% from {o['noise_source']}). "
        f"Trend and a: bootstrap over cells and replicates.",
        "",
        f"- cells: {t['cells']}; censored at the grid's edge: {t['censored_low']} at the lowest "
        f"fraction, {t['censored_high']} at the highest",
        f"- Spearman ρ(f*, S_total): {interval(t['rho_S'])} ({t['rho_S']['n']} cells); "
        f"uncensored cells only: {interval(t['rho_S_uncensored'])} ({t['rho_S_uncensored']['n']})",
        f"- law's f* at the same cells: ρ = {law_rho}",
        f"- is f* a function of S alone? ρ(f* − f̂(S), N): {interval(t['rho_residual_N'])} "
        f"({_residual_verdict(t['rho_residual_N'])}); sizes at equal S are compared below",
        f"- predictor f̂(S) = exp(−a / ln S): **a = {interval(t['a'])}** "
        f"against the paper's {t['paper_a']} "
        f"({'inside' if t['paper_a_in_ci'] else 'outside'} the interval)",
        "",
    ]
    per_bits = [
        [
            k,
            str(b["cells"]),
            f"{b['censored_low']} / {b['censored_high']}",
            interval(b["rho_S"]),
            interval(b["a"]),
        ]
        for k, b in o["trend_by_bits"].items()
    ]
    lines += table(["bits", "cells", "censored low / high", "ρ(f*, S) [95%]", "a [95%]"], per_bits)
    rows = [
        [
            f"{c['N']:.3g}",
            f"{c['D_total']:.3g}",
            bits_key(c["B"]),
            f"{c['S_total']:.0f}",
            f"{c['f_star']:.3g} [{c['f_lo']:.3g}, {c['f_hi']:.3g}]",
            c["censored"] or "–",
            f"{c['law_f_star']:.3f}",
            c["method"],
        ]
        for c in o["cells"]
    ]
    header = ["N", "D_total", "bits", "S_total", "f* runs [95%]", "censored", "f* law", "from"]
    return [*lines, *table(header, rows), *md_size_pairs(o.get("size_pairs", []))]


def _residual_verdict(rho: dict[str, Any]) -> str:
    if rho["lo"] is None:
        return "undetermined"
    if rho["lo"] > 0 or rho["hi"] < 0:
        return "away from 0: N matters beyond S"
    return "the interval holds 0: no sign here that N matters beyond S"


def md_size_pairs(pairs: list[dict[str, Any]]) -> list[str]:
    """Each size against the next larger at the same bits and S (analysis.optima.size_pairs)."""
    title = "### Sizes at equal S"
    if not pairs:
        return ["", title, "", "Not available: no two sizes share a (bits, S_total) cell.", ""]
    lower = sum(p["diff"] < 0 for p in pairs)
    higher = sum(p["diff"] > 0 for p in pairs)
    below = sum(p["diff_hi"] < 0 for p in pairs)
    above = sum(p["diff_lo"] > 0 for p in pairs)
    rows = [
        [
            bits_key(p["B"]),
            f"{p['S_total']:.0f}",
            f"{p['N_small']:.3g} → {p['N_large']:.3g}",
            f"{p['f_small']:.3g} → {p['f_large']:.3g}",
            f"{p['diff']:+.3g} [{p['diff_lo']:+.3g}, {p['diff_hi']:+.3g}]",
            p["censored"] or "–",
        ]
        for p in pairs
    ]
    return [
        "",
        title,
        "",
        "Were f* a function of S alone (the paper's predictor), a larger model at the same bits "
        "and tokens per parameter would have the same f*. The larger size's f* is lower in "
        f"{lower}, higher in {higher} and equal in {len(pairs) - lower - higher} of "
        f"{len(pairs)} pairs; the difference's 95% interval is below 0 in {below} and above 0 "
        f"in {above}. A censored f* (at the grid's top) bounds the difference only on one side.",
        "",
        *table(["bits", "S_total", "N", "f*", "difference [95%]", "censored"], rows),
        "",
    ]


def md_noise(s: dict[str, Any]) -> list[str]:
    title = "## 3. Seed noise against fraction gaps"
    if (u := _unavailable(title, s)) is not None:
        return u
    return [
        title,
        "",
        f"- {s['runs_with_seeds']} runs in {s['cells_with_seeds']} cells have >= 2 seeds",
        f"- a run's loss across seeds: relative std median {100 * s['seed_std_rel_median']:.3f}% "
        f"(max {100 * s['seed_std_rel_max']:.3f}%)",
        f"- within a seed, once its common shift is removed: {100 * s['paired_std_rel']:.3f}% "
        f"({s['paired_dof']} dof)",
        "- loss gap between adjacent fractions (median): "
        f"{100 * s['fraction_gap_rel_median']:.3f}%; best to second-best fraction: "
        f"{100 * s['best_gap_rel_median']:.3f}%",
        f"- seed std / adjacent-fraction gap: {s['seed_over_fraction_gap']:.2f}; paired noise / "
        f"best gap: {s['paired_over_best_gap']:.2f}",
        f"- seeds agree on f* in {s['f_star_agree']} of {s['f_star_cells']} cells",
        "",
    ]


def md_waste(w: dict[str, Any]) -> list[str]:
    title = "## 4. Wasted tokens of QAT fraction 0.1"
    if (u := _unavailable(title, w)) is not None:
        return u
    rows = [
        [
            k,
            str(e["cells"]),
            num(e["law_optimal_frac_mean"], ".3f"),
            f"{num(e['law_wasted_pct_median'], '.1f')} [{num(e['law_wasted_pct_min'], '.1f')}, "
            f"{num(e['law_wasted_pct_max'], '.1f')}]",
            str(e["law_unreachable"]),
            num(e.get("runs_wasted_pct_mean"), ".1f"),
        ]
        for k, e in w["by_bits"].items()
    ]
    head = [
        "bits",
        "cells",
        "law f* (mean)",
        "law waste %, median [min, max]",
        "cells never caught up (within 10⁴ × D_total)",
        "runs' gap as waste %",
    ]
    note = [f"Runs: {w['note']}.", ""] if w["note"] else []
    return [
        title,
        "",
        "Paper: up to ~50% at 1 bit, 5–30% at 2–4, 5–10% at 6.",
        "",
        *note,
        *table(head, rows),
    ]


def md_fusion(u: dict[str, Any]) -> list[str]:
    title = "## 5. Fused against classic (paired cells)"
    if (x := _unavailable(title, u)) is not None:
        return x
    rows = [
        [
            k,
            str(e["cells"]),
            f"{e['mean_diff']:+.4f}",
            num(e["std_err"], ".4f"),
            f"{e['fused_wins']}/{e['cells']}",
            e["verdict"],
        ]
        for k, e in [*u["by_bits"].items(), ("all", u["overall"])]
    ]
    head = ["bits", "cells", "fused − classic (nats)", "std. err.", "fused wins", "verdict"]
    return [title, "", "Paper: fusion helps at 4 and 6 bits, not at 1 bit.", "", *table(head, rows)]


def md_advice(a: dict[str, Any]) -> list[str]:
    title = "## 6. What the fitted law advises"
    if (u := _unavailable(title, a)) is not None:
        return u
    tpps = sorted({b["tokens_per_param"] for b in a["best_bits"]})
    by_memory: dict[float, dict[float, str]] = {}
    for b in a["best_bits"]:
        by_memory.setdefault(b["memory_bytes"], {})[b["tokens_per_param"]] = b["best_bits"]
    best = [[f"{m:.3g}", *(row[r] for r in tpps)] for m, row in by_memory.items()]
    never = "not reached up to 1e27 FLOPs"
    cross = [
        [c["bits"], num(c["compute_flops"], ".3g"), num(c["fp_tokens_per_param"], ".3g")]
        if c["compute_flops"] is not None
        else [c["bits"], never, "–"]
        for c in a["crossover"]
    ]
    ext = a["extrapolated_trend"]
    f_by_size: dict[str, list[float]] = {}
    for c in ext["cells"]:
        f_by_size.setdefault(f"{c['N']:.3g}", []).append(c["f_star"])
    trend = [
        [
            n,
            t["direction"],
            num(t["rho"], "+.3f"),
            f"{min(f_by_size[n]):.3f}–{max(f_by_size[n]):.3f}",
        ]
        for n, t in ext["trend_by_size"].items()
    ]
    return [
        title,
        "",
        "Best bit width at a memory budget M (bytes of weights) and compute 6·N_fp·D with "
        "N_fp = M/2 (the FP model of that memory) trained at the given tokens per parameter:",
        "",
        *table(["memory (bytes)", *(f"{r:g} tokens/param" for r in tpps)], best),
        f"Compute from which B-bit QAT matches FP at M = {a['crossover_memory_bytes']:.3g} bytes:",
        "",
        *table(["bits", "compute (FLOPs)", "FP tokens/param"], cross),
        "The law's f* against S_total (30–10⁴) extrapolated to the paper's sizes:",
        "",
        *table(["N", "trend", "ρ", "law f* range"], trend),
    ]


def md_repetition(r: dict[str, Any]) -> list[str]:
    lines = [
        "## 7. Data repetition",
        "",
        f"Runs on part of the train split (train_fraction < 1): {r['part_of_split_runs']}, kept "
        "out of sections 1–6 and compared here only.",
        "",
        "### The train–validation gap against epochs",
        "",
    ]
    trend = r["gap_trend"]
    if not trend.get("available", True):
        lines += [f"Not available: {trend['why']}.", ""]
    else:
        lines += [
            "gap = validation loss − training loss, both at the end of a run. It has an offset at "
            "any number of epochs (the validation documents are others); what repeating the data "
            "adds is its growth with the passes over the data. Slope: per doubling of epochs, "
            "within families of runs that differ only in budget and data fraction; 95% interval "
            f"from {trend['bootstrap']} resamples of the families.",
            "",
            *table(
                ["model", "N", "runs", "epochs", "gap slope per doubling [95%]", "verdict"],
                [
                    [
                        s["model"] or "–",
                        f"{s['N']:.3g}",
                        str(s["runs"]),
                        f"{s['epochs_min']:.3g}–{s['epochs_max']:.3g}",
                        f"{num(s['slope_per_doubling'], '+.4f')} "
                        f"[{num(s['lo'], '+.4f')}, {num(s['hi'], '+.4f')}]",
                        s["verdict"],
                    ]
                    for s in trend["sizes"]
                ],
            ),
            *table(
                ["model", "D_total", "train fraction", "epochs", "runs", "mean gap"],
                [
                    [
                        s["model"] or f"{s['N']:.3g}",
                        f"{b['D_total']:.3g}",
                        f"{b['train_fraction']:g}",
                        f"{b['epochs']:.3g}",
                        str(b["runs"]),
                        num(b["gap"]),
                    ]
                    for s in trend["sizes"]
                    for b in s["budgets"]
                ],
            ),
        ]
    lines += ["### Part of the train split against all of it (paired cells)", ""]
    pairs = r["pairs"]
    if not pairs.get("available", True):
        return [*lines, f"Not available: {pairs['why']}.", ""]
    rows = [
        [
            p["model"] or f"{p['N']:.3g}",
            f"{p['D_total']:.3g}",
            bits_key(p["B"]),
            f"{p['qat_frac']:g}",
            p["seed"] or "–",
            f"{p['train_fraction']:g} {p['train_part']}",
            f"{num(p['epochs'], '.3g')} / {num(p['epochs_full'], '.3g')}",
            f"{p['loss']:.4f} / {p['loss_full']:.4f}",
            f"{p['diff']:+.4f} ({100 * p['diff_rel']:+.2f}%)",
            num(p["seed_std_full"]),
            f"{num(p.get('gap'))} / {num(p.get('gap_full'))}",
        ]
        for p in pairs["pairs"]
    ]
    head = [
        "model",
        "D_total",
        "bits",
        "QAT fraction",
        "seed",
        "train part",
        "epochs part / all",
        "loss part / all",
        "part − all",
        "seed std (all)",
        "gap part / all",
    ]
    return [
        *lines,
        "Validation loss of a run on part of the train split against the same cell on all of it "
        "(positive: seeing less data more often costs loss), beside the spread of that cell's "
        "loss over seeds.",
        "",
        *table(head, rows),
        *(
            f"- mean part − all, {part} part ({e['pairs']} pairs): {e['mean_diff']:+.4f} nats "
            f"({100 * e['mean_diff_rel']:+.2f}%)"
            for part, e in pairs["by_part"].items()
        ),
        f"- median seed std of the full-data cells: {num(pairs['seed_std_median'])}; runs on "
        f"part of the split without their full-data cell: {pairs['unpaired']}; a leading part "
        "of a split stored in corpus order is also another mix of sources, a spread part only "
        "sees each token more often",
        "",
    ]


def render_markdown(s: dict[str, Any]) -> str:
    g = s["grid"]
    return "\n".join(
        [
            "# Reproduction report",
            "",
            f"- source: {s['source']}",
            f"- runs: {g['runs']} ({g['classic_qat']} classic QAT, {g['fused_qat']} fused QAT, "
            f"{g['fp_only']} FP-only)",
            f"- sizes N: {', '.join(f'{n:.3g}' for n in g['sizes'])}; bits: "
            f"{', '.join(bits_key(b) for b in g['bits'])}; tokens per parameter: "
            f"{', '.join(f'{r:g}' for r in g['tokens_per_param'])}",
            "",
            *md_fit(s["fit"]),
            *md_optima(s["optimal_fraction"]),
            *md_noise(s["seed_noise"]),
            *md_waste(s["wasted_compute"]),
            *md_fusion(s["fusion"]),
            *md_advice(s["advice"]),
            *md_repetition(s["data_repetition"]),
        ]
    )
