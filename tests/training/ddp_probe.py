"""``torchrun ... tests/training/ddp_probe.py fit ...``: the training command line, recording each rank's batches.

Every batch a process trains on is counted by its size in ``$PROBE_DIR/rank{RANK}.json`` (``{size: count}``),
written when the run ends, so a test can check what each process of a torchrun job saw.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

from training import train
from training.__main__ import main

sizes: Counter[int] = Counter()
real_get_batch = train.get_batch


def recorded_get_batch(items, index, device):
    batch = real_get_batch(items, index, device)
    sizes[int(batch.shape[0])] += 1
    return batch


if __name__ == "__main__":
    train.get_batch = recorded_get_batch
    status = main(sys.argv[1:])
    out = Path(os.environ["PROBE_DIR"]) / f"rank{os.environ['RANK']}.json"
    out.write_text(json.dumps({"world_size": int(os.environ["WORLD_SIZE"]), "batches": dict(sizes)}))
    sys.exit(status)
