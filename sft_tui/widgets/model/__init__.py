"""Step 1's widgets: the list of demos and cached models."""
