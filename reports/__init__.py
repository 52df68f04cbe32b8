"""Reports: markdown and JSON rendered from the `analysis` library's statistics, one module per
results folder (mini: `python -m reports.mini`). The statistics themselves live in `analysis`."""
