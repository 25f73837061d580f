"""The source's worked examples (shared/seeds, shared/seed-notes.md), computed with jaxcnn."""
import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn as jc

IMAGE = [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]
KERNEL = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]


def test_five_by_five_feature_map():
    conv = jc.Conv2D(1, (3, 3), use_bias=False)
    x = jnp.asarray(IMAGE, jnp.float32).reshape(1, 5, 5, 1)
    w = jnp.asarray(KERNEL, jnp.float32).reshape(3, 3, 1, 1)
    y = jax.jit(conv.apply)({"w": w}, x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[4, 3, 4], [2, 4, 3], [2, 3, 4]])
    assert float(jnp.sum(x[0, :3, :3, 0] * w[:, :, 0, 0])) == 4.0  # 1+0+1+0+1+0+0+0+1


def test_polynomial_product_is_the_true_convolution_of_coefficients():
    """(x^2+3x+2)(2x+5) = 2x^3+11x^2+19x+10: [1,3,2] * [2,5] = [2,11,19,10] (eq. 4.1)."""
    f = jnp.asarray([1.0, 3.0, 2.0]).reshape(1, 1, 3, 1)
    g = jnp.asarray([2.0, 5.0])
    # A CNN "convolution" is a correlation: the true convolution needs the kernel flipped and
    # "full" padding (k - 1 on each side).
    conv = jc.Conv2D(1, (1, 2), padding=((0, 0), (1, 1)), use_bias=False)
    y = conv.apply({"w": g[::-1].reshape(1, 2, 1, 1)}, f)
    np.testing.assert_array_equal(y.ravel(), [2, 11, 19, 10])
    np.testing.assert_array_equal(np.convolve([1, 3, 2], [2, 5]), [2, 11, 19, 10])


def test_the_flip_reappears_in_the_input_residual():
    """The backward of a correlation with g is a true (full) convolution with g (eq. 4.5)."""
    conv = jc.Conv2D(1, (1, 2), use_bias=False)
    params = {"w": jnp.asarray([2.0, 5.0]).reshape(1, 2, 1, 1)}
    x = jnp.zeros((1, 1, 4, 1))
    _, cache = conv.forward(params, x)
    delta = jnp.asarray([1.0, 3.0, 2.0]).reshape(1, 1, 3, 1)
    _, dx = conv.backward(params, cache, delta)
    np.testing.assert_array_equal(dx.ravel(), [2, 11, 19, 10])


def test_sigmoid_network_residuals_by_the_source_equations():
    """Two sigmoid layers and J = 1/2 ||y - a||^2, by the source's formulas in numpy:
    output residual -(y - a) a (1 - a), hidden residual (W^T delta) a (1 - a), dJ/dW = a delta^T.
    """
    rng = np.random.default_rng(0)
    net = jc.serial(jc.Dense(4, param_dtype=jnp.float64), jc.Sigmoid(),
                    jc.Dense(3, param_dtype=jnp.float64), jc.Sigmoid())
    params, _ = net.init(jax.random.key(0), (5,))
    a1 = rng.normal(size=(1, 5))
    y = rng.uniform(size=(1, 3))
    (p1, _, p2, _) = params
    w1, b1, w2, b2 = (np.asarray(v) for v in (p1["w"], p1["b"], p2["w"], p2["b"]))
    a2 = 1 / (1 + np.exp(-(a1 @ w1 + b1)))                       # z = W a + b, a = f(z)
    a3 = 1 / (1 + np.exp(-(a2 @ w2 + b2)))
    delta3 = -(y - a3) * a3 * (1 - a3)                          # output residual
    delta2 = (delta3 @ w2.T) * a2 * (1 - a2)                    # hidden residual
    manual = [a1.T @ delta2, delta2[0], a2.T @ delta3, delta3[0]]

    loss, grads = jax.jit(jc.value_and_grad(net, jc.squared_error))(
        params, jnp.asarray(a1), jnp.asarray(y))
    ours = [grads[0]["w"], grads[0]["b"], grads[2]["w"], grads[2]["b"]]
    auto = jax.grad(lambda p: jc.squared_error.value(net.apply(p, jnp.asarray(a1)),
                                                     jnp.asarray(y)))(params)
    autos = [auto[0]["w"], auto[0]["b"], auto[2]["w"], auto[2]["b"]]
    assert np.isclose(float(loss), 0.5 * np.sum((y - a3) ** 2), rtol=1e-12)
    for m, o, a in zip(manual, ours, autos):
        np.testing.assert_allclose(o, m, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(o, a, rtol=1e-12, atol=1e-15)
    # one gradient-descent step W := W - alpha dJ/dW lowers the loss
    stepped = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    assert jc.squared_error.value(net.apply(stepped, jnp.asarray(a1)), jnp.asarray(y)) < loss
