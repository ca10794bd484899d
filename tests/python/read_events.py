"""Reads a run folder's TensorBoard event files with TensorBoard's own reader
and prints what it holds as JSON (for tests/tensorboard.rs).

Usage: python tests/python/read_events.py RUN_DIR

- "scalars", "images", "texts": what `EventAccumulator` (the reader behind
  `tensorboard --logdir`, orphan purging on) keeps for each tag: steps and
  values; image sizes and PNG bytes' length; the text.
- "files": for each event file in name order, as `EventFileLoader` reads it
  raw: each event's step and kind (file_version, summary tags, session_log).
"""
import glob
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import event_file_loader


def main(run):
    acc = ea.EventAccumulator(
        run, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0}
    )
    acc.Reload()
    tags = acc.Tags()
    out = {"scalars": {}, "images": {}, "texts": {}, "files": []}
    for tag in tags["scalars"]:
        out["scalars"][tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
    for tag in tags["images"]:
        out["images"][tag] = [
            {
                "step": e.step,
                "width": e.width,
                "height": e.height,
                "png": e.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n",
                "bytes": len(e.encoded_image_string),
            }
            for e in acc.Images(tag)
        ]
    for tag in tags["tensors"]:
        out["texts"][tag] = [
            [e.step, b"".join(e.tensor_proto.string_val).decode()]
            for e in acc.Tensors(tag)
        ]
    for path in sorted(glob.glob(os.path.join(run, "*tfevents*"))):
        events = []
        for e in event_file_loader.EventFileLoader(path).Load():
            kind = e.WhichOneof("what")
            if kind == "summary":
                kind = "summary:" + ",".join(v.tag for v in e.summary.value)
            elif kind == "session_log":
                kind = "session_log:%d" % e.session_log.status
            events.append([e.step, kind])
        out["files"].append({"name": os.path.basename(path), "events": events})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
