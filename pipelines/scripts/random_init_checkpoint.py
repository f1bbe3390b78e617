"""Writes a seeded random-init checkpoint (a state_dict) for a model, for pipelines that
have no trained weights at hand (none can be downloaded on a build machine).

    python random_init_checkpoint.py --model monai.networks.nets:SwinUNETR \
        --arg in_channels=1 --arg out_channels=14 --arg feature_size=48 --seed 0 --out ckpt.pth

`--arg` values are read as JSON when they parse (1, 0.5, true, [2, 2]) and as strings
otherwise. The same seed gives the same weights with the same torch version.
"""

import argparse
import importlib
import json

import torch


def parse_arg(text):
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="import path, package.module:Name")
    parser.add_argument("--arg", action="append", default=[], help="a model argument, key=value")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    options = parser.parse_args()
    module, _, name = options.model.partition(":")
    factory = importlib.import_module(module)
    for part in name.split("."):
        factory = getattr(factory, part)
    torch.manual_seed(options.seed)
    model = factory(**dict(parse_arg(a) for a in options.arg))
    state = model.state_dict()
    torch.save(state, options.out)
    count = sum(t.numel() for t in state.values())
    print(f"wrote a random-init state_dict of {options.model} ({count} values, seed {options.seed}) to {options.out}")


if __name__ == "__main__":
    main()
