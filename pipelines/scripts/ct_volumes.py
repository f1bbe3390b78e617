"""Synthetic CT-like volumes with organ labels, deterministic from a seed (no data can be
downloaded on a build machine).

    python ct_volumes.py --count 2 --shape 160 160 128 --seed 0 --volumes DIR --labels FILE

Each volume is a body (an elliptic cylinder of soft tissue at about 40 HU, in air at
-1000 HU) with a spine (bone, about 700 HU) and six organs of distinct intensity at
jittered places and sizes, plus Gaussian noise (sigma 15 HU):

    label  organ (BTCV's class numbers)   HU
    1      spleen                          45
    2      right kidney                   150
    3      left kidney                    150
    6      liver                           60
    7      stomach                        -20
    8      aorta                          200
    0      everything else (air, body, spine)

`DIR/ct_000.npy` ... are float32, 1 x X x Y x Z (channels first, for the `dataset` kind's
`.npy` folder source); `FILE` is int64, count x X x Y x Z, in the same (sorted) order.
"""
import argparse
import os

import numpy as np

ORGANS = [
    # label, HU, centre (share of each axis), radii (share of each axis)
    (6, 60.0, (0.38, 0.42, 0.55), (0.20, 0.17, 0.22)),
    (1, 45.0, (0.68, 0.40, 0.55), (0.08, 0.08, 0.12)),
    (2, 150.0, (0.36, 0.66, 0.45), (0.05, 0.06, 0.09)),
    (3, 150.0, (0.64, 0.66, 0.45), (0.05, 0.06, 0.09)),
    (7, -20.0, (0.60, 0.38, 0.66), (0.09, 0.07, 0.10)),
    (8, 200.0, (0.50, 0.60, 0.50), (0.02, 0.02, 0.45)),
]


def ellipsoid(grid, centre, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def volume(shape, rng):
    grid = np.meshgrid(*[np.linspace(0.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij")
    image = np.full(shape, -1000.0, np.float32)
    labels = np.zeros(shape, np.int64)
    body = ((grid[0] - 0.5) / 0.42) ** 2 + ((grid[1] - 0.5) / 0.34) ** 2 <= 1.0
    image[body] = 40.0
    spine = ((grid[0] - 0.5) / 0.05) ** 2 + ((grid[1] - 0.75) / 0.05) ** 2 <= 1.0
    image[spine] = 700.0
    for label, hu, centre, radii in ORGANS:
        c = [v + rng.uniform(-0.03, 0.03) for v in centre]
        r = [v * rng.uniform(0.85, 1.15) for v in radii]
        mask = ellipsoid(grid, c, r) & body
        image[mask] = hu
        labels[mask] = label
    image += rng.standard_normal(shape).astype(np.float32) * 15.0
    return image, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--shape", type=int, nargs=3, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--volumes", required=True)
    parser.add_argument("--labels", required=True)
    args = parser.parse_args()
    os.makedirs(args.volumes, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    all_labels = np.zeros((args.count, *args.shape), np.int64)
    for i in range(args.count):
        image, labels = volume(tuple(args.shape), rng)
        np.save(os.path.join(args.volumes, f"ct_{i:03d}.npy"), image[None])
        all_labels[i] = labels
    np.save(args.labels, all_labels)


if __name__ == "__main__":
    main()
