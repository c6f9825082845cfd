"""Step 2's widgets: the preview of the tokenized rows."""
