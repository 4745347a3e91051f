"""Where the landmark error is on MTFL's AFLW test list, level by level of the shipped
cascade, and the mean signed offset of the points from the annotations: ours and
YuNet's (an independent model), on the test list and on MTFL's training images.

    python experiments/landmark_errors.py --data ../shared/data/mtfl80 \
        [--yunet ../shared/data/models/face_detection_yunet_2026may.onnx] [--model M]

For each level of the model (1; 1-2; 1-3; flip-averaged, Haar boxes as `deepid2
eval-landmarks`): NME, failure rate, NME on the images where Haar finds the face and on those
with the central box, by head yaw (|nose x - eye midpoint x| / IOD below 0.1 and above
0.35), the median image's error, and the mean signed offset prediction - annotation
per point (x, y) in % of the IOD and in pixels of the 80x80 images. With --yunet, YuNet's
mean signed offset in pixels (its rule as `landmarks.evaluate_yunet`; images where its
mean error exceeds 30% of the IOD, i.e. another face or a miss, are left out) on the test
list and on 1,500 of the training images (a seeded draw; YuNet was trained on WIDER
FACE, not MTFL). Prints JSON lines.
"""

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deepid2_core.face import landmarks as FL  # noqa: E402
from deepid2_core.face.box import face_box  # noqa: E402
from deepid2_core.face.landmark_cascade import LandmarkCascade  # noqa: E402
from deepid2_core.training import landmark_eval as TE  # noqa: E402
from deepid2_core.training import mtfl as TM  # noqa: E402


def ours(model, data, rows):
    levels = [None] + list(model.cascade.levels if model.cascade else [])
    preds = [[] for _ in levels]
    found = []
    for rel, _ in rows:
        gray = cv2.imread(os.path.join(data, rel), cv2.IMREAD_GRAYSCALE)
        box, hit = face_box(gray, "haar")
        found.append(hit)
        base = FL.LandmarkModel(model.params, model.cfg, model.meta, model.be,
                               model.flip_average, None)
        p = FL.predict_landmarks(base, gray, box).astype(np.float64)
        preds[0].append(p[0])
        for k, lv in enumerate(levels[1:], 1):
            p = LandmarkCascade([lv]).refine(gray, p, model.flip_average)
            preds[k].append(p[0])
    return [np.array(p) for p in preds], np.array(found)


def report(name, p, gt, found):
    e = TE.nme(p, gt)
    iod = np.linalg.norm(gt[:, 1] - gt[:, 0], axis=1)
    yaw = np.abs(gt[:, 2, 0] - gt[:, :2, 0].mean(1)) / iod
    off = p - gt
    s = TE.summarise(e)
    pct = lambda v: round(100 * float(v), 2)  # noqa: E731
    return dict(levels=name, n=s["n"], nme=pct(s["nme"]), failure_rate=pct(s["failure_rate"]),
                per_point={k: pct(v) for k, v in s["per_point"].items()},
                haar_found=dict(n=int(found.sum()), nme=pct(e[found].mean())),
                central_box=dict(n=int((~found).sum()), nme=pct(e[~found].mean())),
                yaw_below_0_1=pct(e[yaw < 0.1].mean()), yaw_above_0_35=pct(e[yaw > 0.35].mean()),
                median_image=pct(np.median(e.mean(1))),
                offset_pct_iod=dict(x=[pct(v) for v in (off[..., 0] / iod[:, None]).mean(0)],
                                    y=[pct(v) for v in (off[..., 1] / iod[:, None]).mean(0)]),
                offset_px=dict(x=round(float(off[..., 0].mean()), 2),
                               y=round(float(off[..., 1].mean()), 2)))


def yunet_offsets(data, onnx, rows):
    det = cv2.FaceDetectorYN.create(onnx, "", (80, 80), 0.9, 0.3, 5000)
    offs = []
    for rel, pts in rows:
        img = cv2.imread(os.path.join(data, rel))
        up = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
        for im, k, pad in ((img, 1.0, 0), (up, 2.0, 0),
                           (cv2.copyMakeBorder(up, 40, 40, 40, 40, cv2.BORDER_REPLICATE), 2.0, 40)):
            det.setInputSize((im.shape[1], im.shape[0]))
            _, faces = det.detect(im)
            if faces is not None and len(faces):
                f = faces[np.argmax(faces[:, -1])]
                p = (f[4:14].reshape(5, 2).astype(np.float64) - pad + 0.5) / k - 0.5
                if TE.nme(p[None], pts[None]).mean() < 0.3:
                    offs.append(p - pts)
                break
    o = np.array(offs)
    return dict(n=len(o), offset_px=dict(x=round(float(o[..., 0].mean()), 2),
                                         y=round(float(o[..., 1].mean()), 2)),
                median_px=dict(x=round(float(np.median(o[..., 0])), 2),
                               y=round(float(np.median(o[..., 1])), 2)))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--model")
    p.add_argument("--yunet")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    model = FL.load_landmark_model(a.model)
    rows = TM.read_mtfl(a.data, TM.TEST_LIST)
    gt = np.stack([pts for _, pts in rows])
    preds, found = ours(model, a.data, rows)
    for k, pk in enumerate(preds):
        print(json.dumps(report("1" if k == 0 else f"1-{k + 1}", pk, gt, found)))
    if a.yunet:
        train = [r for r in TM.read_mtfl(a.data, TM.TRAIN_LIST)
                 if not TM.known_bad_annotation(r[0], r[1], (80, 80))]
        pick = np.sort(np.random.default_rng(0).choice(len(train), 1500, replace=False))
        train = [train[i] for i in pick]
        for name, sub in (("yunet test AFLW", rows),
                          ("yunet train lfw_5590", [r for r in train if r[0].startswith("lfw")]),
                          ("yunet train net_7876", [r for r in train if r[0].startswith("net")])):
            print(json.dumps(dict(what=name, **yunet_offsets(a.data, a.yunet, sub))))
    print(json.dumps(dict(seconds=round(time.perf_counter() - t0, 1))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
