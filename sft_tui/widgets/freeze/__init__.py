"""Step 3's widgets: the module tree, the rule list, the summary bar, and the per-module states they show."""
