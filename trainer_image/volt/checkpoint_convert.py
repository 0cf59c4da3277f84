"""Convert a sharded checkpoint directory into one file that ``torch.load`` and Lightning read.

    python -m volt.checkpoint_convert SRC_DIR DST_FILE

SRC_DIR is a sharded (``torch.distributed.checkpoint``) checkpoint written by volt
(``strategy="fsdp"`` or ``ShardedCheckpointIO``); DST_FILE gets the same dict a
single-file checkpoint holds - full tensors, ``state_dict``, ``optimizer_states``,
``loops``, ``callbacks`` - written atomically. It runs on one process and needs the
whole state in CPU memory. The optimizer states of an FSDP run are keyed by
parameter name (``torch.distributed.checkpoint.state_dict``'s format).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from volt.checkpoint import atomic_save
from volt.checkpoint_sharded import is_sharded, load_sharded


def convert(src: str, dst: str) -> int:
    """Write the sharded checkpoint ``src`` as the single file ``dst``; returns the bytes written."""
    if not is_sharded(src):
        raise ValueError(f"SRC {src!r} is not a sharded checkpoint directory (no .metadata in it)")
    if os.path.isdir(dst):
        raise ValueError(f"DST {dst!r} is a directory; name the file to write")
    return atomic_save(load_sharded(src), dst)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m volt.checkpoint_convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="a sharded checkpoint directory (e.g. checkpoints/last.ckpt)")
    parser.add_argument("dst", help="the single checkpoint file to write")
    args = parser.parse_args(argv)
    try:
        size = convert(args.src, args.dst)
    except (ValueError, OSError) as err:
        print(f"volt.checkpoint_convert: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
