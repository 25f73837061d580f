"""Classic mistakes in a backward pass, planted into real layers (used by the mutation and
audit tests).  A mutant is ``wrong_backward(layer, params, cache, x, delta)``."""
import jax
import jax.numpy as jnp

from jaxcnn import _geometry as geo
from jaxcnn.conv_transpose import adjoint_window
from jaxcnn.reference import conv as reference_conv
from jaxcnn.reference import conv_transpose as reference_conv_transpose


def conv_without_flip(layer, params, cache, x, delta):
    """Input residual with the kernel *not* rotated by 180 degrees."""
    grads, _ = layer.backward(params, cache, delta)
    g = geo.window("Conv2D", x.shape[1:3], (3, 3), (2, 2), (1, 1), "VALID")
    return grads, reference_conv.backward_input(delta, params["w"][::-1, ::-1], g)


def conv_transpose_input_residual_flipped(layer, params, cache, x, delta):
    """A transposed convolution's input residual with the kernel rotated by 180 degrees, as a
    convolution's input residual has it (eq. 4.5): eq. 4.12 is a correlation, not rotated."""
    grads, _ = layer.backward(params, cache, delta)
    g = adjoint_window("ConvTranspose2D", x.shape[1:3], (3, 3), (2, 2), (1, 1), "VALID")
    return grads, reference_conv_transpose.backward_input(delta, params["w"][::-1, ::-1], g)


def kernel_gradient_flipped(layer, params, cache, x, delta):
    """Kernel gradient as a true convolution (flipped) instead of a correlation."""
    grads, dx = layer.backward(params, cache, delta)
    return {**grads, "w": grads["w"][::-1, ::-1]}, dx


def sigmoid_slope_as_a(layer, params, cache, x, delta):
    """f'(z) written as a instead of a (1 - a)."""
    return (), delta * cache.a


def max_pool_routes_to_last_tie(layer, params, cache, x, delta):
    """Tied maxima routed to the last maximum instead of the first."""
    g = geo.window("MaxPool2D", x.shape[1:3], (2, 2), (2, 2), (1, 1), "VALID")
    win = geo.windows(x, g)
    last = g.count - 1 - jnp.argmax(win[:, :, :, ::-1, :], axis=3)
    one_hot = last[:, :, :, None, :] == jnp.arange(g.count).reshape(1, 1, 1, -1, 1)
    return (), geo.scatter_windows(jnp.where(one_hot, delta[:, :, :, None, :], 0), g)


def avg_pool_not_divided(layer, params, cache, x, delta):
    """Delta copied to every window position without the 1 / |R|."""
    _, dx = layer.backward(params, cache, delta)
    return (), dx * 4


def pool_drops_the_ceil_window(layer, params, cache, x, delta):
    """A ceil-mode pooling whose backward ignores the last, partial windows (eq. 5.11): their
    delta dropped, as if the output size had been floored."""
    keep = jnp.zeros_like(delta).at[:, :-1, :-1].set(1)
    return layer.backward(params, cache, delta * keep)


def dense_bias_gradient_averaged(layer, params, cache, x, delta):
    """Bias gradient as the mean of delta over the batch instead of the sum (eq. 1.5)."""
    grads, dx = layer.backward(params, cache, delta)
    return {**grads, "b": jnp.mean(delta, axis=0)}, dx


def stochastic_resamples(layer, params, cache, x, delta):
    """The backward draws again instead of reusing the cached sample."""
    _, fresh = layer.forward(params, x, key=jax.random.key(99))
    return layer.backward(params, cache._replace(index=fresh.index), delta)


def mutate(layer, wrong_backward):
    """The same layer, with ``wrong_backward(layer, params, cache, x, delta)`` as its backward
    (its forward also keeps the input, which some mutants need)."""

    def forward(params, x, *, key=None, train=True):
        y, cache = layer.forward(params, x, key=key, train=train)
        return y, (cache, x)

    def backward(params, cache_and_x, delta):
        cache, x = cache_and_x
        return wrong_backward(layer, params, cache, x, delta)

    state = layer.state           # a BatchNorm's update reads the layer's own cache, in front
    if state is not None:
        state = state._replace(update=lambda s, cache_and_x: layer.state.update(s, cache_and_x[0]))
    return layer._replace(forward=forward, backward=backward, state=state)


def branch_point_one_branch_only(layer, params, cache, x, delta):
    """A branch point that passes back the residual of its first branch only (eq. 6.5 says:
    the sum of all)."""
    return (), delta[0]


def concat_split_swapped(layer, params, cache, x, delta):
    """A concatenation whose backward hands each input the other input's slice: the split of
    eq. 6.7 taken from the wrong end (meaningful for two inputs of one size)."""
    _, parts = layer.backward(params, cache, delta)
    return (), tuple(reversed(parts))


def batchnorm_without_statistics_terms(layer, params, cache, x, delta):
    """BatchNorm's input residual as if the batch mean and variance were constants,
    ``dx = delta scale / sigma``: the terms through them (eqs. 7.7-7.9) dropped from eq. 7.10."""
    grads, _ = layer.backward(params, cache, delta)
    scale = params["scale"].reshape((1,) * (delta.ndim - 1) + (-1,))
    return grads, delta * scale * cache.inv_std.astype(delta.dtype)


def dropout_not_rescaled(layer, params, cache, x, delta):
    """Dropout's backward with the cached mask but without the ``1 / (1 - rate)`` (eq. 7.16)."""
    return (), delta * cache.mask.astype(delta.dtype)
