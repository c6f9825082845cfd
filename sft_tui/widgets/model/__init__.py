"""What step 1 (the model) shows besides its form: where a model can come from."""
