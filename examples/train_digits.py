"""Train CNNs on the bundled 8x8 digits with the hand-written backward, through the Python API.

``jaxcnn train`` is a thin layer over ``jaxcnn.fit``; a research script calls ``fit`` with its own
net, loss, optimizer and arrays and gets the same loop: a jitted step over the hand-written
backward, a gradient check against ``jax.grad`` before the first step, evaluation every epoch.

    python examples/train_digits.py            # the default net, then a net defined here
    python examples/train_digits.py --zoo      # also the zoo's other nets, each with its recipe

Prints one line per net: test accuracy on the 360 held-out digits, epochs, seconds (of ``fit``:
compilation, the gradient check and evaluation included), and the gradient check's worst
relative error.
"""
import argparse
import time

import jax
import numpy as np
import optax

import jaxcnn as jc
from jaxcnn import data, train, zoo


def run(name, net, ds, optimizer, loss=jc.softmax_cross_entropy, targets=None, epochs=30,
        batch_size=32, seed=0):
    """``fit`` on the digits; ``targets``: ``(train, test)`` arrays in place of the labels."""
    y_train, y_test = (ds.y_train, ds.y_test) if targets is None else targets
    params, _ = train.init_params(net, ds.image_shape, seed)
    t = time.perf_counter()
    result = jc.fit(net, params, ds.x_train, y_train, ds.x_test, y_test, loss=loss,
                    optimizer=optimizer, epochs=epochs, batch_size=batch_size, seed=seed,
                    verbose=False)
    seconds = time.perf_counter() - t
    # the accuracy by hand (fit reports one only for integer labels), in test mode: a net with
    # BatchNorm normalises with the running statistics fit returns in result.state
    trained = jc.with_state(net, result.state)      # the net itself for a net without state
    predicted = np.argmax(np.asarray(trained.apply(result.params, ds.x_test, train=False)), axis=1)
    accuracy = float(np.mean(predicted == ds.y_test))
    print(f"{name:<44} test accuracy {100 * accuracy:6.2f}%  {result.summary['epochs']} epochs  "
          f"{seconds:5.1f} s  grad check "
          f"{result.summary['gradient_check_worst_relative_error']:.1e}", flush=True)
    return accuracy


def source_net():
    """The source post's formulation: sigmoid outputs under squared error ``1/2 ||y - a||^2``
    against one-hot targets (eq. 2.5), here after tanh conv layers and max pooling."""
    return jc.serial(
        jc.Conv2D(32, 3, padding="SAME"), jc.Tanh(), jc.MaxPool2D(2),
        jc.Conv2D(64, 3, padding="SAME"), jc.Tanh(), jc.MaxPool2D(2),
        jc.Flatten(), jc.Dense(10), jc.Sigmoid())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", action="store_true", help="also train the paper nets")
    args = parser.parse_args()

    ds = data.load_digits()
    print(f"{ds.describe()}; {jax.devices()[0].platform} ({jax.local_device_count()} device), "
          f"jax {jax.__version__}")
    adam = train.make_optimizer("adam", 1e-3)          # jaxcnn train's default optimizer
    run("small (jaxcnn train's default), adam 1e-3", zoo.small(ds.image_shape), ds, adam)
    one_hot = np.eye(10, dtype=np.float32)
    run("this script's net, squared error, adam 1e-3", source_net(), ds, optax.adam(1e-3),
        loss=jc.squared_error, targets=(one_hot[ds.y_train], one_hot[ds.y_test]))
    if args.zoo:            # each net with its recipe: jaxcnn train --arch NAME's defaults
        for name, recipe in zoo.RECIPES.items():
            if name != "small":
                run(f"{name}, adam {recipe.lr:g}", zoo.get(name, ds.image_shape), ds,
                    train.make_optimizer("adam", recipe.lr), epochs=recipe.epochs)


if __name__ == "__main__":
    main()
