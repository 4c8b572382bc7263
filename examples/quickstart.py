"""tfdeploy from Python, start to finish: export, serve, predict, bench, stop.

Runs as written from any directory (``python examples/quickstart.py``); everything it
writes goes to a fresh temporary folder, and its server has its own name and free ports,
so it never collides with a server ``tfdeploy serve`` started.
"""

import asyncio
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import tfdeploy

work = Path(tempfile.mkdtemp(prefix="tfdeploy-quickstart-"))
scenes = tfdeploy.demo.images()  # the bundled demo images, found from any directory

# 1. Export the bundled demo checkpoint as version 1 of a model base path.
result = tfdeploy.export(output=work / "models" / "deeplab")
print("exported version", result.version, "->", result.path)

# 2. Serve it (runtime="auto" would use docker or tensorflow_model_server when present).
with tfdeploy.serve(work / "models" / "deeplab", runtime="embedded", name="quickstart",
                    grpc_port=0, rest_port=0) as server:
    print("serving at", server.grpc_address, "and", server.rest_url)
    client = server.client()  # or tfdeploy.Client(server.grpc_address)
    print("signatures:", ", ".join(client.metadata()), "| versions:", client.status())

    # 3. Predict: a path, a uint8 numpy array, encoded bytes.  A mask is a PIL palette
    #    image of the input's size; pixel value = class index.
    mask = client.predict(scenes[0])
    mask.save(work / "scene_1.png")
    rgb = np.asarray(Image.open(scenes[0]).convert("RGB"))
    same = client.predict(rgb)
    from_bytes = client.predict(scenes[0].read_bytes())
    agree = (np.asarray(same) == np.asarray(mask)).mean()  # JPEG decoders differ a little
    print("mask", mask.size, "classes", np.unique(np.asarray(mask)).tolist(),
          f"| array: {agree:.1%} of pixels as from the file, bytes:",
          np.array_equal(np.asarray(from_bytes), np.asarray(mask)))

    # 4. Many at once: futures, or asyncio.
    masks = [f.result() for f in map(client.predict_async, scenes)]

    async def predict_all() -> list:
        return await asyncio.gather(*(client.apredict(p) for p in scenes))

    masks = asyncio.run(predict_all())
    print(len(masks), "masks with asyncio")

    # 5. A folder in, mask files out (what `tfdeploy predict` does).
    results = client.predict_files([scenes[0].parent], output_dir=work / "masks",
                                   overlay=True, concurrency=2)
    print(sum(r.ok for r in results), "of", len(results), "images ->", work / "masks")

    # 6. Latency and throughput, the way perf_analyzer measures them.
    for level in tfdeploy.bench(client, concurrency=[1, 2], requests=8):
        print(f"concurrency {level.concurrency}: {level.throughput} req/s, "
              f"p50 {level.p50_ms} ms")
    client.close()
# 7. Leaving the block stopped the server.
print("done; files in", work)
