"""One fresh process's timing of ImageReward's ``score_tensors``, for the benchmarks that
compare processes (``cpu_quota.py``, ``isa_ab.py``).

    python benchmarks/tensors_timing.py CHECKPOINT DTYPE THREADS

A full-size ImageReward checkpoint scores 8 random 224 px tensors (seed 0) with one
prompt, best of 3 calls after a 2-image warm-up. THREADS is a number, ``default``
(torch's own) or ``allocated`` (``cpu_share.use_allocated_threads()``). Prints one
JSON line: threads, s/img, the scores, torch's version, the ``imagereward`` imported
(so a caller running an earlier commit through ``PYTHONPATH`` can check it), and the
CPU allocation where this ``imagereward`` knows it.
"""

import json
import sys
import time

import torch

checkpoint, dtype, threads = sys.argv[1:4]
if threads.isdigit():
    torch.set_num_threads(int(threads))

import imagereward  # noqa: E402  (after the threads: an earlier commit may set none of its own)

try:
    from imagereward.cpu_share import cpu_allocation, use_allocated_threads
except ImportError:  # an earlier commit
    cpu_allocation = use_allocated_threads = None
if threads == "allocated":
    use_allocated_threads()
model = imagereward.load("ImageReward-v1.0", checkpoint=checkpoint, dtype=dtype, device="cpu")
pixels = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
prompt = "a photograph of an astronaut riding a horse on the moon, highly detailed, 4k"
with torch.no_grad():
    model.score_tensors(pixels[:2], prompt)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        scores = model.score_tensors(pixels, prompt)
        times.append(time.perf_counter() - start)
print(json.dumps({"threads": torch.get_num_threads(), "s_per_image": min(times) / len(pixels),
                  "scores": [float(s) for s in scores], "torch": torch.__version__,
                  "code": imagereward.__file__, "allocation": cpu_allocation() if cpu_allocation else None}))
