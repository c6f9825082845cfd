"""Step 5's widgets: the setup panel, and the panes of a run (progress, charts, evals, stats, log, results)."""
