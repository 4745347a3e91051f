"""`deepid2 align IN_DIR OUT_DIR`: detect, find landmarks, align and write every face
of a folder of images.

IN_DIR is a folder of identity folders (LFW's ``root/<person>/<file>.jpg``) or a flat
folder of images; it is walked recursively (hidden files and folders, and OUT_DIR when
it lies inside IN_DIR, are left out) and every file with an image extension
(`IMAGE_EXTENSIONS`, any case) is one input. Files with other extensions are counted as
``skipped`` and not read. Inputs are taken in the order of their relative paths' parts.

For each image, independently (a bad image is that image's result and never stops the
batch):

1. read: `detect.read_image` (8-bit BGR whatever the file held: grey, RGBA and 16-bit
   images are converted; truncated JPEGs, text and garbage are ``unreadable``, with the
   reason);
2. detect, landmarks:

   * ``detector="yunet"`` (default): the C++ pipeline (`deepid2_core.face.native`,
     cpp/include/deepid2/pipeline.h): YuNet (the package's model, converted to
     models/yunet.safetensors and run by this project's code), each box mapped onto the
     box convention the landmark nets were trained on, small images retried upscaled,
     then the landmark ConvNet and its cascade; no Haar fallback (it found nothing
     YuNet missed on LFW and celeba-lfwstyle). With ``model`` (another YuNet ONNX file)
     OpenCV runs the detector, with the Haar rule below where it finds nothing.
   * ``detector="haar"``: the box rule the shipped landmark model was trained
     on (`deepid2_core.face.box.face_boxes`): OpenCV's frontal-face Haar cascade with
     ``detectMultiScale``'s defaults (scale 1.1, 3 neighbours, 24 px), and where it finds
     nothing, a second try on the image padded by 25% of its smaller side (faces cut by
     the edge). The largest box (or, with ``all_faces``, every box, largest first) goes
     to the landmark ConvNet (`face.landmarks.predict_landmarks`). Detection and landmarks
     see the grey of the colour image as read (``cv2.COLOR_BGR2GRAY``); libjpeg's own
     grey decode, which `training.landmarks.evaluate` uses, can differ by a grey level and so
     move a Haar box by a pixel. Where both tries find
     nothing the image is ``no_face``; with ``central_fallback`` it is still ``no_face``
     but aligned on the rule's fixed central box (a square of 0.56 min(H, W) centred at
     (0.5 W, 0.47 H), the model was trained on it too), for data sets such as LFW whose
     faces are all centred and every image is wanted.
   * ``pick``: which face is face 1 (and the only one without ``all_faces``): "largest"
     (default) or "center" (nearest the image centre; LFW's convention).

3. align: the least-squares similarity of the two eyes and the mouth-corner midpoint
   onto the canonical positions (`align.align_face`, in C++; default 250 x 250, LFW's
   deep-funneled geometry);
4. write the aligned face to OUT_DIR under the same relative path and file name (JPEG
   quality 95 for .jpg / .jpeg, lossless PNG for .png, the same format for .bmp, .tif,
   .webp and .ppm, PNG with ``.png`` appended for the other extensions); with
   ``all_faces`` face k (1 = largest) is written as ``name_k.ext``.

OUT_DIR/landmarks.csv (one row per face), safe writing and resuming: face/align_output.py.

Determinism: every image is processed alone (the landmark ops give the same bits for
any thread count), results are gathered in input order, so the same input and options
give byte-identical CSVs and images whatever ``workers`` is.

Parallelism: a thread pool (``workers``, default the usable CPUs, at most 8). The work
is nearly all in code that drops the GIL: the C++ pipeline, OpenCV (decode, encode) and,
with ``--detector haar``, the numba Haar scan (``nogil=True``).

Symbolic links under IN_DIR are followed (linked identity folders and linked images
are inputs like the others; a link back to a folder above it is not walked twice), as
`deepid2 train` and `deepid2 enroll` follow them (`data.scan_identities`).
"""
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .align import align_face
from .align_output import (CSV_NAME, JOURNAL_FORMAT, JOURNAL_NAME, csv_bytes, encode_image,
                           file_key, journal_entry, journal_lines, output_name, remove_stale,
                           resume, sweep_temporaries, write_atomic)
from .box import HAAR_MIN_SIZE, PICKS, YUNET_MODEL, central_box, face_boxes, yunet_detector
from .detect import YuNetDetector, read_image
from .image import pixel_limit
from .landmarks import DEFAULT_MODEL, LandmarkModel, load_landmark_model, predict_landmarks

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .dib .tif .tiff .webp .pgm .ppm .pbm .pnm .pxm .sr "
    ".ras .jp2 .gif .avif .exr .hdr .pic".split())
YUNET_MIN_FACE = YuNetDetector.min_face
CSV_EVERY = 500               # landmarks.csv is rewritten (whole) after this many images
MAX_SIDE = 1024               # images larger than this are shrunk for detection only


def parse_size(value):
    """250 / "250" -> (250, 250); (w, h) / "200x250" / "200,250" -> (200, 250)."""
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"size must be N or WxH, got {value!r}") from None
    elif isinstance(value, (int, np.integer)):
        nums = [int(value)]
    else:
        nums = [int(v) for v in value]
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 8:
        raise ValueError(f"size must be N or WxH with sides of at least 8 px, got {value!r}")
    return tuple(nums)


@dataclass
class _Face:
    box: np.ndarray
    score: float
    source: str
    points: Optional[np.ndarray] = None
    aligned_points: Optional[np.ndarray] = None
    output: str = ""


@dataclass
class _Result:
    rel: str
    status: str
    reason: str = ""
    faces: list = field(default_factory=list)
    read: bool = False


def list_images(in_dir, out_dir=None):
    """(sorted relative paths of the image files under in_dir, number of other files)."""
    in_dir = os.path.abspath(os.fspath(in_dir))
    skip = os.path.realpath(out_dir) if out_dir is not None else None
    found, others = [], 0
    for root, dirs, files in os.walk(in_dir, followlinks=True):
        real_root = os.path.realpath(root)
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and os.path.realpath(os.path.join(root, d)) != skip
                   and not _is_ancestor(os.path.realpath(os.path.join(root, d)), real_root)]
        rel_root = os.path.relpath(root, in_dir)
        parts = () if rel_root == "." else tuple(rel_root.split(os.sep))
        for f in files:
            if f.startswith("."):
                continue
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                found.append(parts + (f,))
            else:
                others += 1
    found.sort()
    return ["/".join(p) for p in found], others


def _is_ancestor(a, b):
    """Whether folder a is b or holds it (a link to it would loop)."""
    return b == a or b.startswith(a.rstrip(os.sep) + os.sep)


class _Aligner:
    """Per-run settings and the models; process() is thread-safe."""

    def __init__(self, out_dir, detector, model, size, all_faces, central_fallback,
                 landmark_model, pick="largest"):
        self.out_dir, self.size, self.all_faces = out_dir, size, all_faces
        self.central_fallback, self.pick, self.yunet_model = central_fallback, pick, model
        self.kind = detector
        if detector == "yunet" and model:
            yunet_detector(model)          # a bad model file: refused here, once
        self.min_face = HAAR_MIN_SIZE    # the central fallback's smallest image
        # the C++ pipeline: YuNet (the packaged model), the landmark nets and the
        # alignment in one place; Haar, another YuNet ONNX file or a LandmarkModel
        # object keep the Python stages
        self.native = None
        if detector == "yunet" and not model and not isinstance(landmark_model, LandmarkModel):
            from .native import pipeline
            self.native = pipeline(None, landmark_model)
            self.model = None
        else:
            self.model = (landmark_model if isinstance(landmark_model, LandmarkModel)
                          else load_landmark_model(landmark_model))
        self._made = set()

    def _detect_native(self, img):
        faces = self.native.detect(img, self.pick)
        if not self.all_faces:
            faces = faces[:1]
        if faces:
            return "ok", "", [_Face(box.astype(np.float64), score, "yunet", pts.astype(np.float64))
                              for box, pts, score, _, _ in faces]
        h, w = img.shape[:2]
        reason = "no face found"
        if min(h, w) < YUNET_MIN_FACE:
            reason = (f"image ({w}x{h}) is smaller than the smallest detectable face "
                      f"({YUNET_MIN_FACE} px)")
        if self.central_fallback and min(h, w) >= self.min_face:
            box, pts, *_ = self.native.locate(img, central_box(img.shape))
            return "no_face", reason + "; aligned on the central box", [
                _Face(box.astype(np.float64), 0.0, "central", pts.astype(np.float64))]
        return "no_face", reason, []

    def align(self, img, face):
        """(aligned BGR face, its 5 landmarks) of a _Face with points."""
        if self.native is not None:
            aligned, pts = self.native.align(img, face.points.astype(np.float32), *self.size)
            return aligned, pts.astype(np.float64)
        return align_face(img, face.points, self.size)

    def _detect(self, img):
        """(status, reason, [ _Face ]) for a readable image."""
        if self.native is not None:
            return self._detect_native(img)
        fb = face_boxes(img, self.kind, all_faces=self.all_faces, max_side=MAX_SIDE,
                        pick=self.pick, yunet_model=self.yunet_model)
        if fb.found:
            return "ok", "", [_Face(b, float(s), fb.source)
                              for b, s in zip(fb.boxes, fb.scores)]
        if self.central_fallback and min(img.shape[:2]) >= self.min_face:
            faces = [_Face(fb.boxes[0], 0.0, "central")]
            return "no_face", fb.reason + "; aligned on the central box", faces
        return "no_face", fb.reason, []

    def process(self, rel, in_path):
        img, why = read_image(in_path)
        if img is None:
            return _Result(rel, "unreadable", why)
        try:
            status, reason, faces = self._detect(img)
            if faces and faces[0].points is None:
                pts = predict_landmarks(self.model, img, np.stack([f.box for f in faces]))
                for f, p in zip(faces, pts):
                    f.points = p.astype(np.float64)
            out = []
            for k, f in enumerate(faces, 1):
                aligned, f.aligned_points = self.align(img, f)
                f.output = output_name(rel, k, self.all_faces)
                out.append(aligned)
        except Exception as e:  # noqa: BLE001 - one image's failure is that image's result
            return _Result(rel, "error", f"{type(e).__name__}: {e}", read=True)
        for f, aligned in zip(faces, out):
            path = os.path.join(self.out_dir, *f.output.split("/"))
            d = os.path.dirname(path)
            if d not in self._made:
                os.makedirs(d, exist_ok=True)
                self._made.add(d)
            write_atomic(path, encode_image(aligned, path))
        return _Result(rel, status, reason, faces, read=True)


def align_image(img, detector="yunet", landmark_model=None, size=250, aligner=None):
    """One BGR image -> (aligned first face or None, reason when None): the
    same detection, landmarks and alignment as `align_main`."""
    a = aligner or _Aligner(None, detector, None, parse_size(size), False, False,
                            landmark_model)
    status, reason, faces = a._detect(img)
    if not faces:
        return None, reason or status
    f = faces[0]
    if f.points is None:
        f.points = predict_landmarks(a.model, img, f.box[None])[0].astype(np.float64)
    aligned, _ = a.align(img, f)
    return aligned, ""


def new_aligner(detector="yunet", landmark_model=None, size=250, pick="largest", model=None):
    """An aligner to reuse across `align_image` calls (loads the models once)."""
    return _Aligner(None, detector, model, parse_size(size), False, False, landmark_model,
                    pick)


def _settings(detector, model, size, all_faces, central_fallback, landmark_model, pick):
    """What a run's results depend on besides the inputs: a journal is resumed only
    under the same settings. A LandmarkModel object (API) is never taken for an earlier
    one: such runs start over."""
    lm = (f"object {id(landmark_model)} {time.time_ns()}"
          if isinstance(landmark_model, LandmarkModel)
          else file_key(os.fspath(landmark_model) if landmark_model else DEFAULT_MODEL))
    yunet = (file_key(model or YUNET_MODEL) if detector == "yunet" else None)
    return dict(detector=detector, model=yunet, size=list(size), all_faces=bool(all_faces),
                central_fallback=bool(central_fallback), landmark_model=lm, pick=pick)


def default_workers():
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def align_main(in_dir, out_dir, detector="yunet", model=None, size=250, all_faces=False,
               workers=None, progress=True, central_fallback=False, landmark_model=None,
               log=print, pick="largest"):
    """Align every image under in_dir into out_dir (module docstring) and write
    out_dir/landmarks.csv. detector "yunet" (`model`: another YuNet ONNX file than the
    packaged one) or "haar"; the landmark ConvNet (`landmark_model`: a path or
    LandmarkModel, default the shipped one) gives the points. size: N or (W, H).
    Resumes an interrupted run into the same out_dir (module docstring).
    Returns the summary dict (also printed through `log` unless log is None)."""
    from ..progress import Progress
    t0 = time.perf_counter()
    in_dir, out_dir = os.path.abspath(os.fspath(in_dir)), os.path.abspath(os.fspath(out_dir))
    if detector not in ("haar", "yunet"):
        raise ValueError(f"detector must be yunet or haar, got {detector!r}")
    if detector == "haar" and model:
        raise ValueError("--model is a YuNet model: it goes with --detector yunet")
    if pick not in PICKS:
        raise ValueError(f"pick must be largest or center, got {pick!r}")
    if not os.path.isdir(in_dir):
        raise ValueError(f"{in_dir} is not a folder")
    if os.path.realpath(in_dir) == os.path.realpath(out_dir):
        raise ValueError("OUT_DIR must differ from IN_DIR (the inputs would be overwritten)")
    size = parse_size(size)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    pixel_limit()                    # a bad DEEPID2_MAX_PIXELS: refused before any work

    rels, skipped = list_images(in_dir, out_dir)
    aligner = _Aligner(out_dir, detector, model, size, all_faces, central_fallback,
                       landmark_model, pick)
    os.makedirs(out_dir, exist_ok=True)
    sweep_temporaries(out_dir)

    def in_path(rel):
        return os.path.join(in_dir, *rel.split("/"))

    # the journal: what an earlier run did, and every aligned file any run left here
    settings = _settings(detector, model, size, all_faces, central_fallback, landmark_model,
                         pick)
    journal_path = os.path.join(out_dir, JOURNAL_NAME)
    done, previous = resume(out_dir, settings, rels, in_path)
    records = {rel: done[rel] for rel in rels if rel in done}
    todo = [rel for rel in rels if rel not in done]
    header = dict(journal=JOURNAL_FORMAT, settings=settings, previous=sorted(previous))
    write_atomic(journal_path, journal_lines(header, records.values()).encode("utf-8"))
    if done:
        print(f"align: {len(done)} of {len(rels)} images already done in {out_dir}, skipped "
              f"(delete {JOURNAL_NAME} there to align them again)", file=sys.stderr, flush=True)

    def write_csv():
        write_atomic(os.path.join(out_dir, CSV_NAME),
                      csv_bytes(records[r] for r in rels if r in records))

    def task(rel):
        res = aligner.process(rel, in_path(rel))
        return journal_entry(res, in_path(rel), out_dir)

    bar = Progress(len(rels), "aligning", enabled=progress)
    counts = dict(ok=0, no_face=0, unreadable=0, error=0, faces=0)

    def count(rec):
        counts[rec["status"]] += 1
        counts["faces"] += len(rec["rows"]) if rec["status"] == "ok" else 0

    for rec in records.values():
        count(rec)
    if records:
        bar.update(len(records))
    pool = ThreadPoolExecutor(workers) if workers > 1 and len(todo) > 1 else None
    finished = False
    try:
        with open(journal_path, "a", encoding="utf-8") as journal:
            it = pool.map(task, todo) if pool else map(task, todo)
            for k, rec in enumerate(it, 1):
                records[rec["path"]] = rec
                journal.write(json.dumps(rec, separators=(",", ":")) + "\n")
                journal.flush()
                count(rec)
                bar.update(1, f"{counts['faces']} faces, {counts['no_face']} without, "
                              f"{counts['unreadable']} unreadable")
                if k % CSV_EVERY == 0:
                    write_csv()
        finished = True
    finally:
        if pool is not None:     # on an interrupt: drop queued images, let running ones end
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        if not finished:         # what is done so far, whole; the journal resumes the rest
            write_csv()

    write_csv()
    written = {o for r in records.values() for o in r["outputs"]}
    removed = remove_stale(out_dir, previous, written)
    header["previous"] = []          # every file left here is now one this CSV lists
    write_atomic(journal_path,
                  journal_lines(header, [records[r] for r in rels]).encode("utf-8"))

    ordered = [records[r] for r in rels]
    summary = dict(
        images=len(rels), read=sum(bool(r["read"]) for r in ordered), faces=counts["faces"],
        with_face=counts["ok"], no_face=counts["no_face"], unreadable=counts["unreadable"],
        errors=counts["error"], aligned=len(written),
        central=sum(1 for r in ordered for row in r["rows"] if row[5] == "central"),
        skipped_non_images=skipped, stale_removed=removed, resumed=len(done),
        seconds=round(time.perf_counter() - t0, 2), workers=workers, detector=detector,
        landmarks="landmark ConvNet", pick=pick,
        size=list(size), all_faces=bool(all_faces), in_dir=in_dir, out_dir=out_dir,
        csv=os.path.join(out_dir, CSV_NAME))
    if log is not None:
        log(format_summary(summary))
    return summary


def format_summary(s):
    line = (f"aligned {s['images']} images ({s['read']} read): {s['faces']} faces in "
            f"{s['with_face']} images, {s['no_face']} with no face, {s['unreadable']} "
            f"unreadable")
    if s["errors"]:
        line += f", {s['errors']} failed"
    if s["central"]:
        line += f" ({s['central']} of those without a face aligned on the central box)"
    line += f"; {s['seconds']:.1f}s with {s['workers']} workers"
    if s["skipped_non_images"]:
        line += f"; {s['skipped_non_images']} non-image files skipped"
    return line + f"\nwrote {s['aligned']} aligned faces and {s['csv']}"
