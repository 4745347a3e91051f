"""Writes synth_a.u8, synth_b.u8 and synth_c.u8 for a verifier model (default:
the shipped one): the 2P patches of three procedural faces from `deepid2
synth` (seed 0; a and b: two images of one identity, c: another identity),
cut as `deepid2 verify --aligned` cuts them, each patch C x H x W uint8,
planar, RGB, in the model's order [p0, p0 flipped, p1, ...].

    python cpp/examples/faces/make_faces.py [--model M]
"""
import argparse
import os
import tempfile

import numpy as np

from deepid2_core.face.detect import read_image
from deepid2_core.synth import make_dataset
from deepid2_core.verifier.model import Verifier
from deepid2_core.verifier.features import cut_face_patches

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", help="verifier file (default: the shipped model)")
    a = p.parse_args()
    layout = Verifier.load(a.model, progress=False).layout
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(tmp, 2, 2, seed=0, progress=False, workers=1)
        ids = sorted(os.listdir(tmp))
        picks = {"synth_a": (ids[0], 0), "synth_b": (ids[0], 1), "synth_c": (ids[1], 0)}
        for name, (person, k) in picks.items():
            face, why = read_image(os.path.join(tmp, person, sorted(os.listdir(
                os.path.join(tmp, person)))[k]))
            if face is None:
                raise SystemExit(why)
            patches = cut_face_patches(face, layout)
            raw = b"".join(np.ascontiguousarray(q.transpose(2, 0, 1)).tobytes() for q in patches)
            with open(os.path.join(HERE, name + ".u8"), "wb") as f:
                f.write(raw)
            print(f"{name}.u8: {len(patches)} patches, {len(raw)} bytes")


if __name__ == "__main__":
    main()
