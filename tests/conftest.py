import os

import torch

# Without a GPU the Triton kernels are checked through Triton's interpreter, which is chosen
# when a kernel is defined: set before anything imports kernels/*/kernel.py.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from pomstream.model import save_model
from tests.support.models import randomized_model


@pytest.fixture
def tiny_model():
    return randomized_model()


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    return save_model(randomized_model().float(),
                      tmp_path_factory.mktemp("model") / "tiny.safetensors")
