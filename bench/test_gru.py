"""GRU (PyTorch's equations; onnxruntime with linear_before_reset=1)."""
import numpy as np
import pytest
from cases import cases

from lstmfast.bench import GRU_SHAPES


@pytest.mark.parametrize("shape, impl", cases("gru", "train", GRU_SHAPES))
def test_gru_train(run_case, shape, impl):
    run_case("gru", "train", shape, np.float32, impl)


@pytest.mark.parametrize("shape, impl", cases("gru", "infer", GRU_SHAPES))
def test_gru_infer(run_case, shape, impl):
    run_case("gru", "infer", shape, np.float32, impl)
