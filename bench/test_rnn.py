"""Vanilla (Elman, tanh) RNN."""
import numpy as np
import pytest
from cases import cases

from lstmfast.bench import RNN_SHAPES


@pytest.mark.parametrize("shape, impl", cases("rnn", "train", RNN_SHAPES))
def test_rnn_train(run_case, shape, impl):
    run_case("rnn", "train", shape, np.float32, impl)


@pytest.mark.parametrize("shape, impl", cases("rnn", "infer", RNN_SHAPES))
def test_rnn_infer(run_case, shape, impl):
    run_case("rnn", "infer", shape, np.float32, impl)
