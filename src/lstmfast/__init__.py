"""lstmfast: fast LSTM, GRU and vanilla RNN layers for the CPU, with a numpy API."""
from .layers import GRU, LSTM, RNN
from .module import Module

__all__ = ["LSTM", "GRU", "RNN", "Module"]
__version__ = "0.1.0"
