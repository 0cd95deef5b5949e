"""Triton kernels for PoM, each beside a pure-PyTorch reference (see issue: kernels).

Empty for now: the model runs the PyTorch forms in ``model/pom.py``, which are the
references any kernel here must match.
"""
