"""Train four nets of the zoo on the bundled 8x8 digits, with the hand-written backward.

    python examples/train_zoo.py [--fast] [--out DIR]

- LeNet-5 (LeCun et al. 1998): sigmoid units and average pooling -- the source post's
  activation, f(z) = 1 / (1 + e^-z);
- the DeepID face-recognition net the source post pictures (Sun et al. 2014): four ReLU
  convolution layers, three max-pooling layers, and the fully connected layer reading both the
  third pooling layer and the fourth convolution (its skip connection), softmax;
- a small residual net (He et al. 2016): basic blocks whose skips add the block's input to its
  output, global average pooling; and the same with BatchNorm after every convolution, whose
  running statistics ``fit`` updates every step and evaluates with.

The last two branch and merge: their backward passes sum the residuals at every branch point
(``docs/derivation.md``, eqs. 6.5-6.8).

For each net the script prints ``jc.summary`` (shapes, parameters, FLOPs, receptive fields),
trains it with ``jc.fit`` -- whose first act is to compare the hand-written gradients with
``jax.grad`` on one batch -- and prints the test accuracy and the first epoch above 50%.  It
writes, in DIR (default ``figures``):

    train_zoo_<net>_kernels.png   the learned first-layer kernels (jaxcnn.show.plot_kernels)
    train_zoo_curves.png          the nets' training loss and test accuracy per epoch

``--fast`` (or the environment variable ``JAXCNN_FAST=1``): two epochs each on the first
``FAST_TRAIN`` training images, to see it run.
The full run takes about a minute on a CPU.
"""
import argparse
import os
import time

import jax

import jaxcnn as jc
from jaxcnn import data, show, train, zoo

# (net, optimizer, learning rate, epochs): the sigmoid net needs a larger step and longer
NETS = (("lenet5", "adam", 1e-2, 40), ("deepid", "adam", 1e-3, 10),
        ("resnet", "adam", 1e-3, 10), ("resnet-bn", "adam", 1e-3, 10))
FAST_TRAIN = 480


def first_conv(params):
    """The first parameter dict holding a convolution kernel (HWIO), in layer order."""
    return next(p for p in params if isinstance(p, dict) and p["w"].ndim == 4)


def plot_histories(histories, path):
    """Training loss and test accuracy per epoch of each net, on shared axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        ax_loss.plot(epochs, [h["train_loss"] for h in history], marker=".", label=name)
        ax_acc.plot(epochs, [h["test_accuracy"] for h in history], marker=".", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss (epoch mean)", yscale="log",
                title="loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1), title="test accuracy")
    ax_acc.axhline(0.1, color="0.6", linestyle=":", label="chance")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("LeNet-5 (sigmoid, average pooling), DeepID (ReLU, max pooling, a skip) and a "
                 "residual net without and with BatchNorm\non the 8x8 digits, hand-written "
                 "gradients")
    fig.savefig(path, dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true",
                        help=f"two epochs per net on the first {FAST_TRAIN} training images")
    parser.add_argument("--out", default="figures", help="directory for the figures")
    args = parser.parse_args()
    fast = args.fast or os.environ.get("JAXCNN_FAST") == "1"

    os.makedirs(args.out, exist_ok=True)
    ds = data.load_digits()
    x_train, y_train = (ds.x_train[:FAST_TRAIN], ds.y_train[:FAST_TRAIN]) if fast else (
        ds.x_train, ds.y_train)
    histories, first_above = {}, {}
    print(f"{ds.describe()}; jax {jax.__version__} on {jax.devices()[0].platform}\n")
    for name, optimizer, lr, epochs in NETS:
        epochs = 2 if fast else epochs
        net = zoo.get(name, ds.image_shape)
        print(f"== {name}\n{jc.summary(net, ds.image_shape)}")
        params, _ = train.init_params(net, ds.image_shape, seed=0)
        t = time.perf_counter()
        result = jc.fit(net, params, x_train, y_train, ds.x_test, ds.y_test,
                        optimizer=train.make_optimizer(optimizer, lr), epochs=epochs,
                        batch_size=32, seed=0, verbose=False)
        s = result.summary
        above = [h["epoch"] for h in result.history if h["test_accuracy"] > 0.5]
        first_above[name] = above[0] if above else None
        histories[name] = result.history
        print(f"{optimizer} lr {lr:g}, {epochs} epochs in {time.perf_counter() - t:.1f} s "
              f"(compilation included); hand-written vs jax.grad before training: worst "
              f"relative error {s['gradient_check_worst_relative_error']:.1e}")
        print(f"test accuracy {100 * s['test_accuracy']:.2f}%")
        w = first_conv(result.params)["w"]
        kernels = show.plot_kernels(
            w, os.path.join(args.out, f"train_zoo_{name}_kernels.png"),
            title=f"{name}: the {w.shape[3]} learned first-layer kernels "
                  f"({w.shape[0]}x{w.shape[1]}) after {epochs} epochs").path
        print(f"wrote {kernels}\n")

    curves = os.path.join(args.out, "train_zoo_curves.png")
    plot_histories(histories, curves)
    print(f"wrote {curves}")
    print("first epoch above 50% test accuracy: " + ", ".join(
        f"{name} {'not yet' if e is None else e}" for name, e in first_above.items()))
    print("A sigmoid's slope f'(z) = a (1 - a) is at most 1/4 (eq. 2.1), so in the sigmoid net "
          "the residuals shrink at every layer on their way down and learning starts late; "
          "ReLU passes them on unscaled where a unit is active (eq. 2.4).")


if __name__ == "__main__":
    main()
