"""Analysis of a QAT grid: collect runs, fit the loss law, predict and plot (see docs/law.md).

Modules: collect (runs → table), law (laws as data, JSON), fit (multi-start Huber fit,
bootstrap), predict (optimal fraction, wasted tokens, best bit width; CLI), plots, report (files
of a fit), fit_law (the `make fit-law` CLI), mini (the mini-reproduction summary: `make mini`),
synthetic (paper-shaped grids from known laws).
"""
