"""Drives tensor_iroh 0.1 (the predecessor) for scripts/bench-compare.sh.

    predecessor.py receive COUNT        prints its address, then collects COUNT tensors
    predecessor.py send ADDR FILE       sends every tensor of a .safetensors FILE

The sender prints one JSON line: the seconds from its first send_tensor call to
its last one returning (its start-up excluded, as the comparison asks), and the
bytes it moved.
"""

import asyncio
import json
import sys
import time

import tensor_iroh as tp

DTYPES = {"BF16": "bfloat16", "F32": "float32", "F16": "float16", "U8": "uint8", "I64": "int64"}


async def receive(count):
    node = tp.PyTensorNode()
    await node.start()
    print(await node.get_node_addr(), flush=True)
    received = 0
    # Its sends are fire-and-forget: a tensor can be lost, so stop waiting once
    # nothing has come for a while rather than hang.
    try:
        while received < count:
            await asyncio.wait_for(node.wait_for_tensor(), timeout=30)
            received += 1
    except asyncio.TimeoutError:
        pass
    print(json.dumps({"received": received, "expected": count}), flush=True)
    node.shutdown()


def read_safetensors(path):
    """(name, dtype, shape, bytes) for every tensor, in file order."""
    with open(path, "rb") as f:
        blob = f.read()
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + length])
    header.pop("__metadata__", None)
    base = 8 + length
    tensors = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    return [
        (name, t["dtype"], t["shape"], blob[base + t["data_offsets"][0] : base + t["data_offsets"][1]])
        for name, t in tensors
    ]


async def send(addr, path):
    tensors = read_safetensors(path)
    node = tp.PyTensorNode()
    await node.start()
    payloads = [
        (name, tp.PyTensorData(data, list(shape), DTYPES[dtype], False))
        for name, dtype, shape, data in tensors
    ]
    moved = sum(len(data) for *_, data in tensors)
    start = time.perf_counter()
    for name, data in payloads:
        await node.send_tensor(addr, name, data)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "bytes": moved, "tensors": len(payloads)}), flush=True)
    node.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "receive":
        asyncio.run(receive(int(sys.argv[2])))
    else:
        asyncio.run(send(sys.argv[2], sys.argv[3]))
