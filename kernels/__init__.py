"""Triton kernels for PoM, each beside a pure-PyTorch reference.

    kernels/dispatch.py            one switch: kernels or reference (POMSTREAM_KERNELS)
    kernels/pom/ops.py             the operators the model calls (autograd included)
    kernels/pom/aggregate/         activation + polynomial + sums over tokens (fwd, bwd)
    kernels/pom/state_update/      streaming: fold a chunk into many sessions' states
    kernels/pom/select/            gate x state, the input of the output projection

Each operator folder has ``naive.py`` (the reference, the maths of ``model/pom.py``) and
``kernel.py`` (Triton). ``tests/test_kernels.py`` checks every kernel against its
reference, on CPU through Triton's interpreter and on CUDA when a GPU is present.
"""
