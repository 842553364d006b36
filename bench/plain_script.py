"""The reference a user would write without covidct (not a test): one whole process, eager fp32 torchvision.

    .venv/bin/python bench/plain_script.py MODEL_DIR FILES.txt OUT.csv

Imports torch and torchvision, builds torchvision's ResNet-50 with the model's weights, and scores the
files listed in FILES.txt (one path a line) in batches of 32: decode and prepare a batch (covidct's own
slice preparation, so the network sees exactly what covidct's engines see), then one ``torch.no_grad``
forward pass, NCHW, no TTA. Writes path,prob_covid. ``bench/speed.py`` times this whole process beside
``covidct predict``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from covidct.data.dataset import decode_slices
from covidct.model.card import read_card
from covidct.model.checkpoint import WEIGHTS_FILE
from covidct.model.network import build_resnet50
from covidct.preprocess.transforms import normalize

BATCH = 32


def main() -> None:
    model_dir, files, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    paths = [Path(line) for line in files.read_text(encoding="utf-8").splitlines() if line]
    card = read_card(model_dir)
    model = build_resnet50(num_classes=len(card.classes), stride_variant=card.stride_variant)
    model.load_state_dict(load_file(model_dir / WEIGHTS_FILE))
    model.eval()
    rows = []
    for start in range(0, len(paths), BATCH):
        decoded = decode_slices(paths[start : start + BATCH], card.preprocessing)
        images = torch.from_numpy(decoded.images).float().unsqueeze(1)
        with torch.no_grad():
            logits = model(normalize(images, card.preprocessing))
        prob = torch.softmax(logits, dim=1)[:, card.positive_index]
        rows += [(str(paths[start + i]), float(p)) for i, p in zip(decoded.indices, prob, strict=True)]
    with out.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("path", "prob_covid"), *rows])


if __name__ == "__main__":
    main()
