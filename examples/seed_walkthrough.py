"""The source's worked examples, computed with jaxcnn and printed.

    python examples/seed_walkthrough.py [--out DIR]

Writes two figures to DIR (default ``figures``): ``seed_convolution_5x5.png`` (example 2) and
``seed_pooling.png`` (example 3, forward and backward of the three poolings).

1. the polynomial product (x^2+3x+2)(2x+5) as the convolution of coefficient vectors (eq. 4.1);
2. the 5x5 binary image and 3x3 kernel giving the 3x3 feature map (eq. 4.2);
3. average, max and stochastic pooling of one small map, forward and backward (eqs. 5.1-5.8);
4. one sigmoid layer's residuals by the source's formulas next to jax.grad (eqs. 1.4-2.5).
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn as jc


def show(title, array):
    print(f"{title}\n{np.array2string(np.asarray(array), precision=4, suppress_small=True)}\n")


def polynomial_product():
    print("== 1. Convolution as a polynomial product (eq. 4.1)")
    f, g = jnp.asarray([1.0, 3.0, 2.0]), jnp.asarray([2.0, 5.0])   # x^2+3x+2 and 2x+5
    # A CNN layer correlates; with the kernel flipped and "full" padding it convolves.
    conv = jc.Conv2D(1, (1, 2), padding=((0, 0), (1, 1)), use_bias=False)
    product = conv.apply({"w": g[::-1].reshape(1, 2, 1, 1)}, f.reshape(1, 1, 3, 1)).ravel()
    print(f"[1, 3, 2] * [2, 5] = {product.astype(int).tolist()}   ->  2x^3 + 11x^2 + 19x + 10")
    # ... and the flip reappears in the backward pass: the input residual of a correlation
    # with g is the true convolution of delta with g (eq. 4.5).
    corr = jc.Conv2D(1, (1, 2), use_bias=False)
    params = {"w": g.reshape(1, 2, 1, 1)}
    _, cache = corr.forward(params, jnp.zeros((1, 1, 4, 1)))
    _, dx = corr.backward(params, cache, f.reshape(1, 1, 3, 1))
    print(f"input residual of a correlation with [2, 5], delta = [1, 3, 2]: "
          f"{dx.ravel().astype(int).tolist()}\n")


def feature_map():
    print("== 2. The 5x5 image and the 3x3 kernel (eq. 4.2)")
    image = jnp.asarray([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1],
                         [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], jnp.float32)
    kernel = jnp.asarray([[1, 0, 1], [0, 1, 0], [1, 0, 1]], jnp.float32)
    conv = jc.Conv2D(1, (3, 3), use_bias=False)
    y = conv.apply({"w": kernel.reshape(3, 3, 1, 1)}, image.reshape(1, 5, 5, 1))
    show("feature map:", y[0, :, :, 0].astype(int))
    terms = " + ".join(str(int(v)) for v in (image[:3, :3] * kernel).ravel())
    print(f"first entry: {terms} = {int(y[0, 0, 0, 0])}\n")


def poolings():
    print("== 3. Three poolings of one 4x4 map, 2x2 windows (eqs. 5.1-5.8)")
    a = jnp.asarray([[1, 2, 0, 0], [3, 4, 0, 1], [0, 1, 5, 5], [2, 0, 5, 1]],
                    jnp.float32).reshape(1, 4, 4, 1)
    delta = jnp.ones((1, 2, 2, 1), jnp.float32)
    show("input map:", a[0, :, :, 0])
    for name, layer, kw in [("average", jc.AvgPool2D(2), {}), ("max", jc.MaxPool2D(2), {}),
                            ("stochastic (training, one draw)", jc.StochasticPool2D(2),
                             {"key": jax.random.key(0)}),
                            ("stochastic (test time: sum a^2 / sum a)", jc.StochasticPool2D(2),
                             {"train": False})]:
        y, cache = layer.forward((), a, **kw)
        _, dx = layer.backward((), cache, delta)
        show(f"{name} pooling:", y[0, :, :, 0])
        show(f"  what it passes back for delta = 1 (spread, routed or sampled):", dx[0, :, :, 0])
    print("max pooling's tied window [[5, 5], [5, 1]] routes to its first maximum, as jax.grad.\n")


def sigmoid_residuals():
    print("== 4. A sigmoid layer's residuals by hand and by jax.grad (eqs. 1.4-2.5)")
    net = jc.serial(jc.Dense(3, param_dtype=jnp.float64), jc.Sigmoid())
    params, _ = net.init(jax.random.key(0), (4,))
    rng = np.random.default_rng(0)
    a, y = rng.normal(size=(1, 4)), rng.uniform(size=(1, 3))
    w, b = np.asarray(params[0]["w"]), np.asarray(params[0]["b"])
    out = 1 / (1 + np.exp(-(a @ w + b)))                  # a' = f(W a + b)
    delta = -(y - out) * out * (1 - out)                  # output residual, f' = a (1 - a)
    by_hand = a.T @ delta                                 # dJ/dW_ij = a_j delta_i
    _, grads = jc.value_and_grad(net, jc.squared_error)(params, jnp.asarray(a), jnp.asarray(y))
    auto = jax.grad(lambda p: jc.squared_error.value(net.apply(p, jnp.asarray(a)),
                                                     jnp.asarray(y)))(params)
    show("output residual -(y - a) a (1 - a):", delta)
    show("dJ/dW by the source's formula:", by_hand)
    show("dJ/dW by jaxcnn's hand-written backward:", grads[0]["w"])
    show("dJ/dW by jax.grad:", auto[0]["w"])
    worst = float(np.max(np.abs(np.asarray(grads[0]["w"]) - np.asarray(auto[0]["w"]))))
    print(f"largest difference, hand-written vs jax.grad: {worst:.1e}")


def figures(out):
    from jaxcnn import show   # matplotlib: pip install 'jaxcnn[train]'

    print("\n== Figures")
    a = np.asarray([[1, 2, 0, 0], [3, 4, 0, 1], [0, 1, 5, 5], [2, 0, 5, 1]], np.float32)
    for shown in (show.plot_convolution_5x5(os.path.join(out, "seed_convolution_5x5.png")),
                  show.plot_pooling(os.path.join(out, "seed_pooling.png"), a, window=2)):
        print(shown.path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The source's worked examples, with jaxcnn.")
    parser.add_argument("--out", default="figures", help="where the figures go")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    polynomial_product()
    feature_map()
    poolings()
    sigmoid_residuals()
    figures(args.out)
