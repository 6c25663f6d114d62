"""Plain-PyTorch reference implementations of every fastep op (the definitions)."""
