#!/usr/bin/env python3
"""A small, class-balanced subset of Fashion-MNIST for `effnet search` (data/fashion).

Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, MIT licence) is in Debian's package
`dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist). Digits saturate near 99% and cannot
rank candidate architectures; Fashion-MNIST stays well below 100% with small networks and few
epochs, so a proxy's accuracy still separates candidates.

The subset takes the first N_TRAIN / 10 images of each class from the training file and the
first N_TEST / 10 of each class from the test file, in file order (no randomness), and writes
gzip'd IDX files with a fixed gzip mtime, so the output is byte-for-byte reproducible:

    sudo apt-get install dataset-fashion-mnist
    python3 tools/make_fashion_subset.py /usr/share/datasets/fashion-mnist data/fashion
"""
import gzip
import struct
import sys
from pathlib import Path

N_TRAIN = 6000
N_TEST = 2000


def read_idx(path):
    data = gzip.open(path, "rb").read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        size = rows * cols
        return [data[16 + i * size:16 + (i + 1) * size] for i in range(count)], (rows, cols)
    if magic == 2049:
        return list(data[8:8 + count]), None
    raise SystemExit(f"{path}: not an IDX image or label file (magic {magic})")


def take(images, labels, n):
    per_class = n // 10
    seen = [0] * 10
    out_i, out_l = [], []
    for img, lab in zip(images, labels):
        if seen[lab] < per_class:
            seen[lab] += 1
            out_i.append(img)
            out_l.append(lab)
    if len(out_i) != n:
        raise SystemExit(f"only {len(out_i)} images of the {n} wanted")
    return out_i, out_l


def write_gz(path, payload):
    with open(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9, filename="") as f:
            f.write(payload)


def main():
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    for split, theirs, n in [("train", "train", N_TRAIN), ("t10k", "t10k", N_TEST)]:
        images, shape = read_idx(src / f"{theirs}-images-idx3-ubyte.gz")
        labels, _ = read_idx(src / f"{theirs}-labels-idx1-ubyte.gz")
        imgs, labs = take(images, labels, n)
        rows, cols = shape
        write_gz(dst / f"{split}-images-idx3-ubyte.gz",
                 struct.pack(">IIII", 2051, n, rows, cols) + b"".join(imgs))
        write_gz(dst / f"{split}-labels-idx1-ubyte.gz", struct.pack(">II", 2049, n) + bytes(labs))
        print(f"{split}: {n} images, {rows}x{cols}")


if __name__ == "__main__":
    main()
