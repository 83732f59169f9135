r"""
MNIST, row by row
=================

The notes' exercise: read each 28×28 image of a handwritten digit as a **sequence of 28 rows** of 28
pixels, one row per time step, with an LSTM, and classify the digit from the output at the last step (a
many-to-one model):

.. math::

    x_t &= \text{row } t \text{ of the image (28 pixels)}, \quad t = 1, \dots, 28 \\
    y &= \operatorname{softmax}(W_y h_{28} + b_y)

The real data set is not part of the documentation build (it is a download, and a full run takes minutes:
see :doc:`/recipes/mnist`, where an LSTM-128 reaches 99.00% and a two-layer BiLSTM 99.21% on the test set).
So this tutorial makes a stand-in that exists everywhere and trains in seconds: **seven-segment digits**,
drawn at random positions, sizes and stroke widths, with noise. The model and the pipeline are the
recipe's: rows in, one class out.
"""

# %%
# The stand-in data
# -----------------
import torch

import rnnkit
from rnnkit.analysis.plots import plot_confusion, plot_image_grid
from rnnkit.models import SequenceClassifier

SEGMENTS = {  # which of the segments a..g (top, top-right, bottom-right, bottom, bottom-left, top-left, middle)
    0: "abcdef", 1: "bc", 2: "abdeg", 3: "abcdg", 4: "bcfg", 5: "acdfg", 6: "acdefg", 7: "abc", 8: "abcdefg",
    9: "abcdfg"}


def seven_segment(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random digits as uint8 images (n, 28, 28), and their labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.zeros(n, 28, 28)
    for k, digit in enumerate(labels.tolist()):
        w, h = int(torch.randint(8, 14, (), generator=g)), int(torch.randint(14, 20, (), generator=g))
        x0 = int(torch.randint(2, 26 - w, (), generator=g))               # the box's corner, at random
        y0 = int(torch.randint(2, 26 - h, (), generator=g))
        s = int(torch.randint(2, 4, (), generator=g))                      # stroke width
        mid = y0 + h // 2
        boxes = {"a": (y0, y0 + s, x0, x0 + w), "d": (y0 + h - s, y0 + h, x0, x0 + w),
                 "g": (mid - s // 2, mid - s // 2 + s, x0, x0 + w),
                 "f": (y0, mid, x0, x0 + s), "b": (y0, mid, x0 + w - s, x0 + w),
                 "e": (mid, y0 + h, x0, x0 + s), "c": (mid, y0 + h, x0 + w - s, x0 + w)}
        for segment in SEGMENTS[digit]:
            top, bottom, left, right = boxes[segment]
            images[k, top:bottom, left:right] = 1.0
    images = images + 0.25 * torch.rand(n, 28, 28, generator=g)           # noise
    return (images.clamp(0, 1) * 255).to(torch.uint8), labels


train_images, train_labels = seven_segment(3000, seed=0)
test_images, test_labels = seven_segment(1000, seed=1)
plot_image_grid(train_images[:16], [str(d) for d in train_labels[:16].tolist()], "samples.png", ncols=8,
                title="the stand-in: seven-segment digits")

# %%
# Rows as a sequence
# ------------------
# Pixels are scaled to [0, 1] and standardised with the training set's mean and standard deviation, as the
# recipe does with MNIST's; an image (28, 28) is then a sequence of T = 28 steps of I = 28 inputs, and a
# batch (B, 28, 28) is exactly what a ``batch_first`` layer reads.
mean, std = (train_images.float() / 255).mean(), (train_images.float() / 255).std()


def to_rows(images):
    return (images.float() / 255 - mean) / std                            # (B, T=28, I=28)


x_train, x_test = to_rows(train_images), to_rows(test_images)
torch.manual_seed(0)
model = SequenceClassifier(rnnkit.LSTM(28, 64, batch_first=True), outputs=10, how="last")
print(model)

# %%
# Training
# --------
# Adam, batches of 64, clipping at τ = 1, six passes over the 3,000 training images:
optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(6):
    model.train()
    for rows in torch.randperm(len(x_train)).split(64):
        _, loss = model(x_train[rows], train_labels[rows])
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = model(x_test)[0].argmax(1)
    print(f"epoch {epoch + 1}: last batch loss {loss.item():.3f}, test accuracy "
          f"{(predicted == test_labels).float().mean():.1%}")

# %%
# What it gets wrong
# ------------------
# The confusion matrix (true class in rows, predicted in columns) and the misclassified test digits, drawn
# by :func:`rnnkit.analysis.plots.plot_confusion` and :func:`rnnkit.analysis.plots.plot_image_grid`, the
# pictures ``rnnkit train mnist`` writes into its run directory:
confusion = torch.zeros(10, 10, dtype=torch.long)
for true, guess in zip(test_labels.tolist(), predicted.tolist()):
    confusion[true, guess] += 1
plot_confusion(confusion, [str(d) for d in range(10)], "confusion.png", title="stand-in test set")
wrong = torch.nonzero(predicted != test_labels).flatten()[:16]
plot_image_grid(test_images[wrong], [f"{t}→{p}" for t, p in zip(test_labels[wrong].tolist(),
                                                                 predicted[wrong].tolist())],
                "misclassified.png", title="misclassified (true→predicted)")

# %%
# On real MNIST, the same command-line recipe (``rnnkit train mnist``: LSTM-128, Adam with cosine decay,
# 20 epochs) and its options, results and throughput are in :doc:`/recipes/mnist`. The test of the training
# stack on real MNIST with tiny models is
# ``tests/test_training.py::test_a_run_writes_checkpoints_logs_plots_and_metrics``, and the classifier is
# checked against ``torch.nn`` with copied weights by
# ``tests/test_models.py::test_classifier_matches_torch_nn_with_copied_weights``.
