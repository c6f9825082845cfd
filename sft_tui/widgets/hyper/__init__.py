"""Step 4's widgets: form fields generated from the config models, and the step and LR preview."""
