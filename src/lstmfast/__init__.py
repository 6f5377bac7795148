"""lstmfast: fast LSTM, GRU and vanilla RNN layers for the CPU, with a numpy API."""
from . import checkpoint, nn, optim
from .cells import GRUCell, LSTMCell, RNNCell
from .config import show_config
from .layers import GRU, LSTM, RNN
from .module import Module
from .nn import Embedding, Linear, cross_entropy, mse_loss
from .optim import SGD, Adam, clip_grad_norm, clip_grad_value
from .threads import get_num_threads, set_num_threads

__all__ = [
    "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "Module",
    "Linear", "Embedding", "cross_entropy", "mse_loss",
    "SGD", "Adam", "clip_grad_norm", "clip_grad_value",
    "set_num_threads", "get_num_threads", "show_config", "checkpoint", "nn", "optim",
]
__version__ = "0.1.0"
