"""lstmfast: fast LSTM, GRU and vanilla RNN layers for the CPU, with a numpy API."""
from . import checkpoint, nn, optim
from .cells import GRUCell, LSTMCell, RNNCell
from .layers import GRU, LSTM, RNN
from .module import Module
from .nn import Embedding, Linear, cross_entropy, mse_loss
from .optim import SGD, Adam, clip_grad_norm, clip_grad_value

__all__ = [
    "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "Module",
    "Linear", "Embedding", "cross_entropy", "mse_loss",
    "SGD", "Adam", "clip_grad_norm", "clip_grad_value",
    "checkpoint", "nn", "optim",
]
__version__ = "0.1.0"
