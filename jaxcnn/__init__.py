"""jaxcnn: convolutional networks whose gradients are derived by hand and proven right.

Every layer is a ``Layer`` of pure functions ``init / forward / backward / apply`` (see
``jaxcnn.core``); every ``backward`` is written from the residual equations numbered in
``docs/derivation.md`` and tested against ``jax.grad`` of its forward.
"""
from jaxcnn.activations import ReLU, Sigmoid, Softmax, Tanh
from jaxcnn.audit import GradReport, check_grads, check_layer
from jaxcnn.backend import compiler_options
from jaxcnn.conv import Conv2D
from jaxcnn.conv_transpose import ConvTranspose2D
from jaxcnn.core import HWIO, NHWC, Layer
from jaxcnn.dense import Dense, Flatten
from jaxcnn.dropout import Dropout
from jaxcnn.graph import FanInConcat, FanInSum, FanOut, Identity, parallel, residual
from jaxcnn.losses import Loss, softmax_cross_entropy, squared_error
from jaxcnn.network import bridge, serial, value_and_grad
from jaxcnn.norm import BatchNorm, GroupNorm, LayerNorm
from jaxcnn.pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D, StochasticPool2D
from jaxcnn.state import has_state, init_state, update_state, value_grad_and_state, with_state
from jaxcnn.summary import Summary, summary

__version__ = "0.1.0"

__all__ = [
    "Layer", "NHWC", "HWIO",
    "Conv2D", "ConvTranspose2D", "AvgPool2D", "MaxPool2D", "StochasticPool2D", "GlobalAvgPool2D",
    "Sigmoid", "Tanh", "ReLU", "Softmax", "Dense", "Flatten",
    "BatchNorm", "LayerNorm", "GroupNorm", "Dropout",
    "serial", "value_and_grad", "bridge",
    "init_state", "update_state", "with_state", "has_state", "value_grad_and_state",
    "FanOut", "parallel", "FanInSum", "FanInConcat", "Identity", "residual",
    "Loss", "softmax_cross_entropy", "squared_error",
    "check_grads", "check_layer", "GradReport",
    "summary", "Summary", "compiler_options",
]

# training (jaxcnn.train; its optional dependencies are imported only when used)
from jaxcnn import zoo
from jaxcnn.train import fit

__all__ += ["fit", "zoo"]
