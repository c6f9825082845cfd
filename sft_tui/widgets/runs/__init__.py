"""Step 6's widgets: the table of runs, their overlaid curves and the diff of their configs."""
