"""How well a landmark model finds the five points on an MTFL list
(`deepid2 eval-landmarks`, and the test figures of the landmark trainers):
per-point error |p - g| / inter-ocular distance (between the two ground-truth
eye centres), the mean of those (NME), and the failure rate: images whose
mean error over the 5 points exceeds 10%. YuNet's own points, for comparison.
"""

import os

import cv2
import numpy as np

from ..face.box import central_box, face_box, resolve_detector, turn_box, unturn_points
from ..face.image import read_image
from ..face.landmarks import POINTS, predict_landmarks
from ..face.native import pipeline as native_pipeline
from ..progress import Progress
from .mtfl import TEST_LIST, read_mtfl

FAILURE = 0.10


def nme(pred, gt):
    """Per-image, per-point errors / inter-ocular distance: (N x 5)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    iod = np.linalg.norm(gt[:, 1] - gt[:, 0], axis=1)
    if np.any(iod <= 0):
        raise ValueError("ground truth with coincident eyes: no inter-ocular distance")
    return np.linalg.norm(pred - gt, axis=2) / iod[:, None]


def summarise(errors):
    """{nme, per_point, failure_rate, point_failure_rate, n} of N x 5 normalised errors."""
    e = np.asarray(errors, np.float64).reshape(-1, len(POINTS))
    if len(e) == 0:
        return dict(n=0, nme=None, per_point=None, failure_rate=None, point_failure_rate=None)
    return dict(n=int(len(e)), nme=float(e.mean()),
                per_point={p: float(v) for p, v in zip(POINTS, e.mean(0))},
                failure_rate=float((e.mean(1) > FAILURE).mean()),
                point_failure_rate={p: float(v) for p, v in zip(POINTS, (e > FAILURE).mean(0))})


def evaluate(model, data_dir, list_file=TEST_LIST, detector="auto", limit=None, progress=False):
    """NME and failure rate of model on the first `limit` images of an MTFL list, boxes by
    the rule ("auto": Haar; "yunet": the C++ pipeline's YuNet boxes, mapped to Haar's, the
    central box where it finds none; "central": the central box). Returns a dict with nme,
    per_point, failure_rate, point_failure_rate, n, the detector, how often Haar found the
    face, and the per-image errors."""
    detector = resolve_detector(detector)
    rows = read_mtfl(data_dir, list_file)[:limit]
    errs, found, skipped = [], 0, []
    bar = Progress(len(rows), f"evaluating on {list_file}", enabled=progress)
    for rel, pts in rows:
        bar.update(1)
        path = os.path.join(os.fspath(data_dir), rel)
        if detector == "yunet":     # YuNet sees colour; the nets, as in the pipeline, grey
            img = read_image(path)[0]
            gray = None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        else:
            img = gray = read_image(path, grey=True)[0]
        if gray is None:
            skipped.append(rel)
            continue
        turn = 0
        if detector == "yunet":     # the pipeline's C++ detector, as `deepid2 align` runs it
            faces = native_pipeline(None).detect(img, "largest")
            box, hit = (faces[0][0].astype(np.float64), True) if faces else \
                (central_box(img.shape), False)
            turn = faces[0][3] if faces else 0
        else:
            box, hit = face_box(img, detector)
        found += hit
        if turn:                    # a face lying turned: the nets see it upright, as in the pipeline
            h, w = gray.shape
            upright = np.ascontiguousarray(np.rot90(gray, turn))
            pred = unturn_points(predict_landmarks(model, upright, turn_box(box, turn, w, h)),
                                 turn, w, h)
        else:
            pred = predict_landmarks(model, gray, box)
        errs.append(nme(pred, pts[None])[0])
    bar.close()
    res = summarise(errs)
    res.update(detector=detector, list_file=list_file,
               found=found if detector != "central" else None, skipped=skipped,
               errors=np.asarray(errs).tolist())
    return res


def evaluate_yunet(data_dir, onnx_path, list_file=TEST_LIST, limit=None, score_threshold=0.9):
    """YuNet (cv2.FaceDetectorYN) on the same images, for comparison only (the pipeline
    does not depend on it). Rule: the highest-scoring face at the image's own size; if none,
    on the image upscaled 2x; if none, on that padded by 40 px (border replicated). Images
    with no face at all are misses: left out of the NME, counted as failures in
    failure_rate_with_misses. YuNet's points are right eye, left eye, nose, right and left
    mouth corner of the person, i.e. image-left first: the same order as POINTS."""
    rows = read_mtfl(data_dir, list_file)[:limit]
    det = cv2.FaceDetectorYN.create(os.fspath(onnx_path), "", (80, 80), score_threshold, 0.3,
                                    5000)
    errs, how, missed = [], {"native": 0, "upscaled": 0, "padded": 0}, []
    for rel, pts in rows:
        img = read_image(os.path.join(os.fspath(data_dir), rel))[0]
        if img is None:
            missed.append(rel)
            continue
        tries = [("native", img, 1.0, 0)]
        up = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
        tries.append(("upscaled", up, 2.0, 0))
        tries.append(("padded", cv2.copyMakeBorder(up, 40, 40, 40, 40, cv2.BORDER_REPLICATE),
                      2.0, 40))
        for name, im, k, pad in tries:
            det.setInputSize((im.shape[1], im.shape[0]))
            _, faces = det.detect(im)
            if faces is not None and len(faces):
                f = faces[np.argmax(faces[:, -1])]
                p = (f[4:14].reshape(5, 2).astype(np.float64) - pad + 0.5) / k - 0.5
                errs.append(nme(p[None], pts[None])[0])
                how[name] += 1
                break
        else:
            missed.append(rel)
    res = summarise(errs)
    n = len(rows)
    res.update(images=n, detected=len(errs), detection_rate=len(errs) / n, found_by=how,
               missed=missed, errors=np.asarray(errs).tolist(),
               failure_rate_with_misses=float(sum(np.mean(e) > FAILURE for e in errs)
                                              + len(missed)) / n,
               score_threshold=score_threshold)
    return res
