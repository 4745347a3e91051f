"""How often each detector finds a face, and how fast: every image of a folder tree
through the box rule of `face.box` (what `deepid2 align` uses).

    python experiments/detection_rates.py ../shared/data/lfw ../shared/data/celeba-lfwstyle \
        [--detectors yunet,haar] [--limit N]

Per folder and detector: images, faces found (a detector's box, not the central
fallback), the share without a face, and milliseconds per image (one thread, detection
only). For each folder it also counts the images with more than one face, and those
where the largest face is not the one nearest the image centre (`--pick` differs).
Prints JSON lines.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deepid2_core.face import box as B  # noqa: E402
from deepid2_core.face.image import read_image  # noqa: E402
from deepid2_core.face.pipeline import list_images  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("--detectors", default="yunet,haar")
    p.add_argument("--limit", type=int)
    a = p.parse_args(argv)
    for folder in a.folders:
        rels = list_images(folder, None)[0][:a.limit]
        imgs = [read_image(os.path.join(folder, *r.split("/")))[0] for r in rels]
        for det in a.detectors.split(","):
            found = several = differ = 0
            by = {}
            t0 = time.perf_counter()
            for img in imgs:
                fb = B.face_boxes(img, det, all_faces=True)
                by[fb.source] = by.get(fb.source, 0) + 1
                if fb.found:
                    found += 1
                    if len(fb.boxes) > 1:
                        several += 1
                        differ += int(B.order_faces(fb.boxes, img.shape, "center")[0] != 0)
            ms = 1000 * (time.perf_counter() - t0) / len(imgs)
            print(json.dumps(dict(folder=os.path.basename(os.path.normpath(folder)),
                                  detector=det, images=len(imgs), found=found,
                                  without_face_pct=round(100 * (1 - found / len(imgs)), 2),
                                  by_source=by, several_faces=several,
                                  largest_not_central=differ, ms_per_image=round(ms, 2))),
                  flush=True)


if __name__ == "__main__":
    main()
