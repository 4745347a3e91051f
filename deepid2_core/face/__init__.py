"""The face pipeline: detect (YuNet, or Haar), the face-box rule of the landmark nets
(box.py), the 5 landmarks (landmarks.py: level 1 and the cascade), align (similarity on
eyes and mouth), cut multi-patch layouts (DeepID's 60, DeepID2's 200), and `deepid2
align` over a folder (pipeline.py)."""
import importlib

# name -> the submodule that defines it; imported on first use (PEP 562), so that
# `import deepid2_core.face.image` (the CLI's parser, `deepid2 verify --aligned`)
# does not pay for numba and the Haar detector
_WHERE = {
    **dict.fromkeys(["CANONICAL", "DEFAULT_SIZE", "MEAN_SHAPE", "align_face", "alignment_matrix",
                     "alignment_points", "mirror_landmarks", "similarity_transform",
                     "to_pixels", "transform_points"], "align"),
    **dict.fromkeys(["FaceDetection", "HaarDetector", "YuNetDetector", "detect_faces",
                     "detect_image", "make_detector", "read_image", "to_bgr8"], "detect"),
    **dict.fromkeys(["DEEPID", "DEEPID2", "PatchLayout", "Region", "cut_all", "cut_flipped",
                     "cut_patch", "deepid2_layout", "deepid_layout", "flip_partner",
                     "get_layout", "patch_name", "region_box", "resolve_patch"], "patches"),
}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


__all__ = [
    "CANONICAL", "DEFAULT_SIZE", "MEAN_SHAPE", "align_face", "alignment_matrix",
    "alignment_points", "mirror_landmarks", "similarity_transform", "to_pixels",
    "transform_points", "FaceDetection", "HaarDetector", "YuNetDetector", "detect_faces",
    "detect_image", "make_detector", "read_image", "to_bgr8", "DEEPID", "DEEPID2",
    "PatchLayout", "Region", "cut_all", "cut_flipped", "cut_patch", "deepid2_layout",
    "deepid_layout", "flip_partner", "get_layout", "patch_name", "region_box", "resolve_patch",
]
