"""auto_LiRPA side of ``scripts/bench/bounds.py`` (runs in a separate environment).

Reads ``problem.npz`` (weights of the bench CNN, inputs, labels, spec, eps) from the folder
given as the first argument, then serves commands from stdin, one per line: ``ibp`` or
``crown`` computes the margin lower bounds over every input (batches of ``batch``), writes
them to ``<method>.npy`` and answers ``seconds <s>`` on stdout. ``quit`` ends it.
Written for auto_LiRPA 0.3 (torch 1.12); it never imports advtrain.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


def build(arrays):
    convs = [int(c) for c in arrays["conv_channels"]]
    layers = [Normalize(torch.tensor(arrays["mean"]), torch.tensor(arrays["std"]))]
    in_c = 1
    for out_c in convs:
        layers += [nn.Conv2d(in_c, out_c, 4, stride=2, padding=1), nn.ReLU()]
        in_c = out_c
    hidden = int(arrays["hidden"])
    side = int(arrays["side"])
    layers += [
        nn.Flatten(),
        nn.Linear(in_c * side * side, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    ]
    model = nn.Sequential(*layers)
    params = [p for p in model.parameters()]
    for i, p in enumerate(params):
        p.data.copy_(torch.tensor(arrays[f"param{i}"]))
    return model.eval()


def main():
    folder = Path(sys.argv[1])
    arrays = dict(np.load(folder / "problem.npz"))
    torch.set_num_threads(int(arrays["threads"]))
    model = build(arrays)
    x = torch.tensor(arrays["x"])
    spec = torch.tensor(arrays["spec"])
    eps, batch = float(arrays["eps"]), int(arrays["batch"])
    # "matrix" mode: auto_LiRPA 0.3 patches mode cannot pass the Normalize division
    bounded = BoundedModule(
        model, torch.zeros_like(x[:batch]), bound_opts={"conv_mode": "matrix"}, device="cpu"
    )
    print("ready", flush=True)
    for line in sys.stdin:
        method = line.strip()
        if method == "quit":
            break
        start = time.perf_counter()
        parts = []
        for i in range(0, len(x), batch):
            xb, cb = x[i : i + batch], spec[i : i + batch]
            ptb = PerturbationLpNorm(
                norm=np.inf, eps=eps, x_L=(xb - eps).clamp(0, 1), x_U=(xb + eps).clamp(0, 1)
            )
            with torch.no_grad():
                lb, _ = bounded.compute_bounds(
                    x=(BoundedTensor(xb, ptb),), C=cb, method=method.upper()
                )
            parts.append(lb)
        seconds = time.perf_counter() - start
        np.save(folder / f"{method}.npy", torch.cat(parts).numpy())
        print(f"seconds {seconds}", flush=True)


if __name__ == "__main__":
    main()
