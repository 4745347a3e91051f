"""What `deepid2 align` writes, and reads back: the aligned faces' files (`output_name`,
`encode_image`), landmarks.csv (`read_aligned_landmarks` gives training its aligned
points) and the journal a re-run resumes from. Every file is written whole
(`write_atomic`).

OUT_DIR/landmarks.csv has one row per face (or one per image without a face): columns
`CSV_COLUMNS`: the input's relative path, the face number (1 = largest; empty without a
face), status ``ok`` / ``no_face`` / ``unreadable`` (``error`` only for an unexpected
failure of one image's processing), the reason for the last three, the aligned file
(relative to OUT_DIR; empty when none was written), where the box came from (``yunet``,
``haar``, ``haar_padded``, ``central``), the box given to the landmark nets (x, y, w, h,
image pixels), the detector's score (Haar: the number of merged windows; YuNet: its
confidence), the 5
points (left eye, right eye, nose, left and right mouth corner, as seen in the image)
in the image as read and in the aligned image. Numbers have 2 decimals. Pixel centres
are at integer coordinates (OpenCV's convention).

Safe writing: each aligned image is written to a hidden temporary file in its folder
and renamed over the target, so an interrupted run leaves only whole images (and
temporary files of a killed run are removed by the next run). landmarks.csv is written
the same way (never half-written): every `pipeline.CSV_EVERY` images, when a run is interrupted,
and at the end, each time listing the images done so far in input order.

Resuming: after each image its CSV rows, the input's size and mtime, and the aligned
files' sizes are appended to the journal OUT_DIR/.align-journal.jsonl (flushed per
image; its first line holds the run's settings). A re-run with the same settings skips
every image whose journal entry still holds: the input unchanged, each aligned file
there with its size (files are renamed into place whole, so that is a whole file); it
says on stderr how many it skipped. Unreadable images and failures are tried again.
Other settings (detector, model, size, all_faces, central_fallback, landmark model)
start over. A killed run, re-run, gives the same landmarks.csv and files as one
uninterrupted run. Delete the journal to force a full re-run. Aligned files that an
earlier run listed and this run did not write again (a face no longer found, a
different ``all_faces``) are removed at the end, after the new CSV is in place, so
OUT_DIR matches its CSV. One run at a time per OUT_DIR.

"""
import csv
import io
import json
import os

import cv2
import numpy as np

CSV_NAME = "landmarks.csv"
POINT_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
CSV_COLUMNS = (["path", "face", "status", "reason", "output", "source",
                "box_x", "box_y", "box_w", "box_h", "score"]
               + [f"{p}_{c}" for p in POINT_NAMES for c in "xy"]
               + [f"aligned_{p}_{c}" for p in POINT_NAMES for c in "xy"])
TMP_SUFFIX = ".align-tmp"
JOURNAL_NAME = ".align-journal.jsonl"
JOURNAL_FORMAT = 1
# written in the input's own format; the others are written as PNG with ".png" appended
_ENCODABLE = frozenset(".jpg .jpeg .jpe .png .bmp .tif .tiff .webp .ppm".split())
JPEG_QUALITY = 95


def output_name(rel, face, all_faces):
    """The aligned file's path relative to OUT_DIR for face `face` (1-based) of `rel`."""
    stem, ext = os.path.splitext(rel)
    if all_faces:
        stem = f"{stem}_{face}"
    if ext.lower() not in _ENCODABLE:
        return f"{stem}{ext}.png"
    return stem + ext


def encode_image(img, path):
    """The aligned face as the bytes of its file (the format its name says)."""
    ext = os.path.splitext(path)[1].lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext in (".jpg", ".jpeg", ".jpe") else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise OSError(f"could not encode {path} as {ext}")
    return buf.tobytes()


def write_atomic(path, data):
    """Write bytes to path through a hidden temporary file in the same folder + rename."""
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _fmt(v):
    return f"{float(v):.2f}"


def csv_rows(res):
    if not res.faces:
        return [[res.rel, "", res.status, res.reason] + [""] * (len(CSV_COLUMNS) - 4)]
    rows = []
    for k, f in enumerate(res.faces, 1):
        rows.append([res.rel, str(k), res.status, res.reason, f.output, f.source]
                    + [_fmt(v) for v in f.box] + [_fmt(f.score)]
                    + [_fmt(v) for v in f.points.reshape(-1)]
                    + [_fmt(v) for v in f.aligned_points.reshape(-1)])
    return rows


def journal_entry(res, in_path, out_dir):
    """One image's journal entry: its CSV rows and what a re-run checks to skip it."""
    return dict(path=res.rel, input=stat_key(in_path), read=res.read, status=res.status,
                rows=csv_rows(res),
                outputs={f.output: os.path.getsize(os.path.join(out_dir, *f.output.split("/")))
                         for f in res.faces if f.output})


def stat_key(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def still_done(rec, in_path, out_dir):
    """Whether a journal entry can stand for this run: a result worth keeping, the input
    unchanged and every aligned file there, whole (the size written)."""
    if rec.get("status") not in ("ok", "no_face") or rec.get("input") != stat_key(in_path):
        return False
    for o, size in rec.get("outputs", {}).items():
        try:
            if os.path.getsize(os.path.join(out_dir, *o.split("/"))) != size:
                return False
        except OSError:
            return False
    return True


def csv_bytes(records):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for rec in records:
        w.writerows(rec["rows"])
    return buf.getvalue().encode("utf-8")


def file_key(path):
    st = stat_key(path)
    return [os.path.abspath(path)] + (st or [])


def read_journal(path):
    """(header, {rel: entry}) of a journal; a line cut short by a kill ends it. None when
    there is no readable journal."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    entries, header = {}, None
    for k, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except ValueError:
            break
        if not isinstance(obj, dict):
            break
        if k == 0:
            if obj.get("journal") != JOURNAL_FORMAT:
                return None
            header = obj
        elif isinstance(obj.get("path"), str) and isinstance(obj.get("rows"), list):
            entries[obj["path"]] = obj
    return None if header is None else (header, entries)


def journal_lines(header, records):
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in [header, *records])


def safe_outputs(names):
    return {o for o in names if isinstance(o, str) and o and not os.path.isabs(o)
            and ".." not in o.split("/")}


def previous_outputs(out_dir):
    """The aligned files an earlier run's CSV lists (relative, inside OUT_DIR)."""
    path = os.path.join(out_dir, CSV_NAME)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()
    return safe_outputs((r.get("output") or "").strip() for r in rows)


def sweep_temporaries(out_dir):
    """Remove the temporary files a killed run left behind."""
    n = 0
    for root, _, files in os.walk(out_dir):
        for f in files:
            if f.startswith(".") and f.endswith(TMP_SUFFIX):
                try:
                    os.remove(os.path.join(root, f))
                    n += 1
                except OSError:
                    pass
    return n


def resume(out_dir, settings, rels, in_path):
    """(done, previous) for a run of `settings` over the inputs `rels` into out_dir:
    {rel: journal entry} of the images an earlier run did that still hold
    (`still_done`), and every aligned file an earlier run left there (its CSV's and
    its journal's)."""
    old = read_journal(os.path.join(out_dir, JOURNAL_NAME))
    previous = previous_outputs(out_dir)
    if old is None:
        return {}, previous
    header, entries = old
    previous |= safe_outputs(header.get("previous", []))
    previous |= safe_outputs(o for e in entries.values() for o in e.get("outputs", {}))
    if header.get("settings") != settings:
        return {}, previous
    wanted = set(rels)
    return {rel: e for rel, e in entries.items()
            if rel in wanted and still_done(e, in_path(rel), out_dir)}, previous


def remove_stale(out_dir, previous, written):
    """Delete the aligned files an earlier run left that this one did not write;
    returns how many."""
    removed = 0
    for o in sorted(previous - written):
        p = os.path.join(out_dir, *o.split("/"))
        if os.path.isfile(p):
            os.remove(p)
            removed += 1
    return removed


def read_aligned_landmarks(root):
    """{output path relative to root ('/'-separated): 5 x 2 aligned landmarks} from
    root/landmarks.csv as `deepid2 align` writes it."""
    cols = [f"aligned_{p}_{c}" for p in POINT_NAMES for c in "xy"]
    out = {}
    with open(os.path.join(root, CSV_NAME), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            o = (row.get("output") or "").strip()
            try:
                v = np.array([float(row[c]) for c in cols], np.float64).reshape(5, 2)
            except (KeyError, TypeError, ValueError):
                continue
            if o and np.all(np.isfinite(v)):
                out[o] = v
    return out
