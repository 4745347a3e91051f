"""CelebA's img_align_celeba crops in ../shared/data/celeba-aligned (89 x 109,
the face about 45 px wide) padded by 30 px of border replication on every
side, so `deepid2 align`'s Haar detector sees the whole face with context
(../shared/data/README.md advises padding them first):

    python experiments/pad_celeba_aligned.py OUT_DIR
    deepid2 align OUT_DIR ALIGNED_DIR        # 6,918 of 7,180 faces found
"""
import os
import sys

import cv2

DATA = os.environ.get("DEEPID2_DATA", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data"))


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        raise SystemExit(__doc__)
    src, dst = os.path.join(DATA, "celeba-aligned"), sys.argv[1]
    n = 0
    for d in sorted(os.listdir(src)):
        os.makedirs(os.path.join(dst, d), exist_ok=True)
        for f in sorted(os.listdir(os.path.join(src, d))):
            im = cv2.imread(os.path.join(src, d, f))
            if im is None:
                print(f"unreadable: {d}/{f}")
                continue
            padded = cv2.copyMakeBorder(im, 30, 30, 30, 30, cv2.BORDER_REPLICATE)
            cv2.imwrite(os.path.join(dst, d, f), padded, [cv2.IMWRITE_JPEG_QUALITY, 95])
            n += 1
    print(f"wrote {n} padded images to {dst}")


if __name__ == "__main__":
    main()
