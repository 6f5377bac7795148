"""LSTM: training steps and inference at the standard shapes, small-batch inference, and
float64 at two shapes."""
import numpy as np
import pytest
from cases import cases

from lstmfast.bench import FLOAT64_SHAPES, LSTM_INFER_SHAPES, LSTM_SHAPES


@pytest.mark.parametrize("shape, impl", cases("lstm", "train", LSTM_SHAPES))
def test_lstm_train(run_case, shape, impl):
    run_case("lstm", "train", shape, np.float32, impl)


@pytest.mark.parametrize("shape, impl", cases("lstm", "infer", LSTM_SHAPES + LSTM_INFER_SHAPES))
def test_lstm_infer(run_case, shape, impl):
    run_case("lstm", "infer", shape, np.float32, impl)


@pytest.mark.parametrize("shape, impl", cases("lstm", "train", FLOAT64_SHAPES, np.float64))
def test_lstm_train_float64(run_case, shape, impl):
    run_case("lstm", "train", shape, np.float64, impl)


@pytest.mark.parametrize("shape, impl", cases("lstm", "infer", FLOAT64_SHAPES, np.float64))
def test_lstm_infer_float64(run_case, shape, impl):
    run_case("lstm", "infer", shape, np.float64, impl)
