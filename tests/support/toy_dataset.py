"""A small synthetic classification dataset (texts of words w0..w19, which tiny_tokenizer knows): `toy` as a
Dataset, `toy_csv` as the text of a CSV file, and SMALL, the flags of a small `abft run` on such a file."""

from __future__ import annotations

import random

from abft.data import Dataset, DatasetInfo

C3 = ("negative", "neutral", "positive")
SMALL = ["--k", "2", "--train-samples", "8", "--pseudo-batch-size", "4", "--epochs", "1", "--test-samples", "8"]


def toy(name="toy", words=C3, demo_label=None, test_label=None, n_cal=8, n_demo=60, n_test=140, seed=0) -> Dataset:
    """Rows of 2-5 words w0..w19; labels random unless demo_label / test_label (index -> label) are given."""
    rng = random.Random(seed)
    c = len(words)

    def text():
        return " ".join(f"w{rng.randrange(20)}" for _ in range(rng.randint(2, 5)))

    rows = [(text(), rng.randrange(c)) for _ in range(n_cal)]
    rows += [(text(), demo_label(i) if demo_label else rng.randrange(c)) for i in range(n_demo)]
    rows += [(text(), test_label(i) if test_label else rng.randrange(c)) for i in range(n_test)]
    info = DatasetInfo(-1, name, name, "sentence: ", "sentiment: ", tuple(words), (n_cal, n_demo, n_test))
    cal = list(range(n_cal))
    demo = list(range(n_cal, n_cal + n_demo))
    return Dataset(info, rows, cal, demo, list(range(n_cal + n_demo, len(rows))))


def toy_csv(n: int, words=("negative", "positive")) -> str:
    """A CSV file's text: a text,label header and n rows of two words w0..w19 with labels from `words` in turn."""
    return "text,label\n" + "".join(f"w{i % 20} w{(i * 7) % 20},{words[i % len(words)]}\n" for i in range(n))
