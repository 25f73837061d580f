"""Regenerate every figure in docs/figures: ``python docs/make_figures.py`` (about a minute).

1. trains the default digits net for ten epochs with ``jaxcnn.fit`` into a temporary run
   directory, for the learned-kernel figures;
2. draws every ``jaxcnn show`` figure from it (``jaxcnn.show.render("all", ...)``);
3. runs the examples that draw figures, one after the other, with ``--out docs/figures``;
4. checks the budget: each PNG under 200 KB, all of them under 2 MB.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jaxcnn as jc
from jaxcnn import data, show, train, zoo

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures"
EXAMPLES = ("train_zoo.py", "per_example_gradients.py", "bridge_in_plain_jax.py",
            "batchnorm_backward.py", "autoencoder.py", "audit_a_new_layer.py")
PER_FILE, TOTAL = 200_000, 2_000_000


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    ds = data.load_digits()
    net = zoo.get("small", ds.image_shape)
    with tempfile.TemporaryDirectory() as run:
        params, _ = train.init_params(net, ds.image_shape)
        jc.fit(net, params, ds.x_train, ds.y_train, ds.x_test, ds.y_test, epochs=10, out=run,
               info={"dataset": "digits", "arch": "small"}, verbose=True, progress=False)
        for shown in show.render("all", OUT, checkpoint=run):
            print(shown.path)
    for example in EXAMPLES:
        print(f"== examples/{example}", flush=True)
        subprocess.run([sys.executable, str(ROOT / "examples" / example), "--out", str(OUT)],
                       check=True, cwd=ROOT)

    sizes = {p.name: p.stat().st_size for p in sorted(OUT.glob("*.png"))}
    for name, size in sizes.items():
        print(f"{size / 1000:7.1f} KB  {name}")
    print(f"{sum(sizes.values()) / 1000:7.1f} KB  in all")
    too_big = [name for name, size in sizes.items() if size > PER_FILE]
    if too_big or sum(sizes.values()) > TOTAL:
        sys.exit(f"over the budget ({PER_FILE // 1000} KB each, {TOTAL // 1000} KB in all): "
                 f"{', '.join(too_big) or 'the total'}")


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
