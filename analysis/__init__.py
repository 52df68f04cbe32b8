"""Analysis of a QAT grid: collect runs, fit the loss law, predict and plot (see docs/law.md).

Modules: collect (runs → table), law (laws as data, JSON), fit (multi-start Huber fit,
bootstrap), predict (optimal fraction, wasted tokens, best bit width; CLI), plots, report (files
of a fit), fit_law (the `make fit-law` CLI), grid_stats (a grid against the law: held-out fit,
optimal-fraction trend, wasted compute), fusion_stats (fused vs classic at matched cells),
synthetic (paper-shaped grids from known laws). Reports of a results folder are in `reports`.
"""
