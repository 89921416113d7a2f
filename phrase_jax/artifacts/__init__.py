"""The files each stage leaves for the next, one module per artifact (bundle.py: a model)."""
